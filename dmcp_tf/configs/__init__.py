"""Experiment configs: `main.py --config=configs/<file>.py[:argument]`."""
