"""DMCP pipeline: `python main.py --config=configs/<name>.py [--mode=...]` (see README)."""

from dmcp_tf.run.cli import main

if __name__ == "__main__":
    main()
