"""A DMCP run: `main.py`'s steps in a run directory (search, sample, retrain, eval, export, report).

- `cli`: the command line; `config`: every config key, with defaults and checks;
- `pipeline`: runs the steps in order, resumably; `steps/`: one module per step, each declaring its `Step`;
- `rundir`: the run directory (which step writes what, whose run it is, what may be replaced);
- `context`: what the steps share (config, budget, data, models); `trainer`: checkpointed training;
- `recipes`: how the search model and the classifier are compiled from their config sections;
- `checkpoints`: verified training checkpoints; `distributed`: strategies and multi-worker training;
- `errors`: `PipelineError`, a run that cannot start as asked;
- `report`: tables, plots and the markdown report.
"""
