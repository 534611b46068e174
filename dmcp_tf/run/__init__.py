"""A DMCP run: `main.py`'s steps in a run directory (search, sample, retrain, eval, export, report).

- `cli`: the command line; `config`: every config key, with defaults and checks;
- `pipeline`: runs the steps in a run directory;
- `recipes`: how the search model and the classifier are compiled from their config sections;
- `checkpoints`: verified, resumable training checkpoints; `distributed`: strategies and multi-worker training;
- `report`: tables, plots and the markdown report.
"""
