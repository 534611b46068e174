"""What a step of a run declares; the run directory, the pipeline and the command line read it."""

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a run, declared as `STEP` by its module in `steps/` and listed in order in `steps.STEPS`.

    Attributes:
        name: its `--mode` and its result file `<name>.json`.
        run: `run(ctx)` runs it on the `RunContext`; returns the content of `<name>.json`.
        outputs: the run-directory files (and folders) it writes.
        inputs: the run-directory files it reads, which earlier steps write.
        trains: runs on every worker of a multi-worker run and resumes from checkpoints
            (`checkpoints/<name>`); the other steps run on the chief only.
        needs_data: the data set is loaded (and so checked) before anything trains.
        in_all: one of the steps `--mode=all` runs; else it runs only by its own `--mode`.
    """

    name: str
    run: Callable
    outputs: tuple
    inputs: tuple = ()
    trains: bool = False
    needs_data: bool = False
    in_all: bool = True
