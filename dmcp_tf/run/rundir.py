"""The run directory: which step writes which file (as `steps/` declares), whose run it is, what may be replaced.

A run directory belongs to one config: its `config.json`, whose settings in
`IDENTITY` must match for a run to continue there. Every step writes its outputs
(`OUTPUTS`) and then `<step>.json`, so a step with `<step>.json` finished. While
a step runs, a marker `.<step>.started` says that its partial outputs are this
run directory's own: the same command started again redoes them. Any other
output that exists is protected; `--overwrite` allows replacing it.

A run directory is owned by one process at a time (`owned`): the lock file
`.lock` names the holder. Redoing a step removes the outputs of the steps after
it (`begin`), which were made from the outputs it replaces.

Under `MultiWorkerMirroredStrategy` only the chief writes the run directory (and
holds its lock); the other workers write what they must to a scratch folder of
their own (`out`).
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time

from dmcp_tf.io_utils import atomic_save_model, atomic_write_json, atomic_write_text, read_json
from dmcp_tf.run.errors import PipelineError
from dmcp_tf.run.steps import STEPS as DECLARED

# What the steps declare (`steps/`), by name:
STEPS = tuple(step.name for step in DECLARED if step.in_all)  # the pipeline (--mode=all), in order
TRAINING_STEPS = tuple(step.name for step in DECLARED if step.trains)  # run on every worker; others on the chief
OUTPUTS = {step.name: step.outputs for step in DECLARED}
INPUTS = {step.name: step.inputs for step in DECLARED if step.inputs}
# Config sections that define the supernet: a run directory belongs to one of them.
IDENTITY = ("data.name", "data.image_size", "data.preprocess", "mixed_precision", "model", "search")
# A latency table depends on the supernet alone: a run directory that holds only a table
# may start a run with other settings (a latency budget that reads the table, say).
TABLE_IDENTITY = ("data.name", "data.image_size", "model")
# Keys inside those sections that do not change results (may differ on a resumed run).
NOT_IDENTITY = ("search.checkpoint_every_steps", "retrain.checkpoint_every_steps")
# Identity keys added after runs were made: a config.json without them had these values.
IDENTITY_DEFAULTS = {"mixed_precision": "float32", "data.preprocess": "normalize", "model.path": ""}
LOCK = ".lock"


class RunDirectory:
    """One run directory: its files, its owner config, and which steps finished.

    Args:
        root: the directory.
        overwrite: allow replacing outputs of earlier runs (`--overwrite`).
        chief: False on the workers of a multi-worker run other than the chief.
        scratch_prefix: name prefix of such a worker's scratch folder.
    """

    def __init__(self, root, *, overwrite=False, chief=True, scratch_prefix="dmcp-worker-"):
        self.root = root
        self.overwrite = overwrite
        self.chief = chief
        self._scratch = None if chief else tempfile.mkdtemp(prefix=scratch_prefix)

    def path(self, *parts):
        """A file of the run directory (what steps read)."""
        return os.path.join(self.root, *parts)

    def out(self, *parts):
        """Where this process writes a run-directory file: the run directory on the chief."""
        return os.path.join(self._scratch or self.root, *parts)

    def close(self):
        """Removes a worker's scratch folder."""
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)

    @contextlib.contextmanager
    def owned(self):
        """Holds the run directory's lock inside the block (the chief only; a no-op on other workers).

        The lock is an `fcntl.flock` on `.lock`, which names the holder (pid,
        host, start time, command). The kernel releases it when the holder dies
        (killed, crashed), so a lock file left by a dead process is taken over.
        A run directory this block created is removed again if it stays empty
        (a run refused before writing anything leaves nothing behind).

        Raises:
            PipelineError: another process holds the lock (the message names it),
                or the run directory is a file.
        """
        if not self.chief:
            yield
            return
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise PipelineError(f"Run directory {self.root} is a file, not a directory: pass another --run_dir "
                                "(or move the file away).")
        created = not os.path.exists(self.root)
        os.makedirs(self.root, exist_ok=True)
        fd = self._lock()
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path(LOCK))  # while still holding it: a waiting process then sees a new file
            os.close(fd)
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(self.root)  # only if nothing was written

    def _lock(self):
        """Takes the lock; returns the open lock file's descriptor (closing it releases the lock)."""
        path = self.path(LOCK)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PipelineError(
                    f"Run directory {self.root} is in use by another process ({_holder(path)}). Wait for it "
                    "to finish or stop it, or choose another --run_dir; --overwrite does not take a run "
                    "directory from a running process.") from None
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break  # else the holder removed the file we opened as it released the lock: try again
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        return fd

    # --- checks before any training ------------------------------------------
    def check(self, config, steps):
        """Raises `PipelineError` if `steps` may not run here: another config's directory, or outputs to protect.

        A step that started in this run directory but did not finish (no
        `<step>.json`) left partial outputs: they are redone, not protected.
        `--overwrite` with another config is refused where it would keep outputs
        of earlier steps made with the old one.
        """
        saved = self.path("config.json")
        changed = self.changed_identity(config) if os.path.exists(saved) else []
        if changed and not self.overwrite:
            raise PipelineError(
                f"Run directory {self.root} belongs to another config (these settings differ: "
                f"{', '.join(changed)}). Use another --run_dir, or --overwrite to replace that run.")
        kept = self._kept_before(steps)
        if changed and kept:
            raise PipelineError(
                f"--overwrite would redo {', '.join(steps)} with settings that differ from those of this run "
                f"directory ({', '.join(changed)}), beside the outputs of {', '.join(kept)} made with the old ones. "
                "Redo the run from the search (--mode=all --overwrite), or use another --run_dir.")
        if self.overwrite:
            return
        if not os.path.exists(saved) and os.path.exists(self.path("report.md")):
            raise PipelineError(f"Run directory {self.root} holds a report.md that no run of this config wrote "
                                "(there is no config.json). Choose another --run_dir, or --overwrite to replace it.")
        interrupted = {s for s in steps if os.path.exists(self.path(_started(s)))
                       and not os.path.exists(self.path(f"{s}.json"))}
        existing = [f for step in steps if step not in interrupted for f in OUTPUTS[step]
                    if os.path.exists(self.path(f))]
        if existing:
            raise PipelineError(
                f"Run directory {self.root} already holds {', '.join(existing)}, which this run would "
                "replace. Pass --overwrite to replace them, or choose another --run_dir."
            )

    def changed_identity(self, config):
        """The settings in which `config` defines another supernet than the run directory's `config.json`."""
        with open(self.path("config.json")) as f:
            previous = json.load(f)
        current = json.loads(config.to_json())
        keys = TABLE_IDENTITY if self.holds_only_latency_table() else IDENTITY
        return [key for key in keys if _identity_value(previous, key) != _identity_value(current, key)]

    def _kept_before(self, steps):
        """The finished pipeline steps before the first of `steps`: a run of `steps` keeps their outputs."""
        redone = [s for s in steps if s in STEPS]
        return [s for s in STEPS[:STEPS.index(redone[0])] if self.finished(s)] if redone else []

    def holds_only_latency_table(self):
        """True if the latency table is here and no other step wrote or started anything."""
        others = [f for step in STEPS for f in (*OUTPUTS[step], f"{step}.json", _started(step))]
        return os.path.exists(self.path("latency_table.json")) and not any(os.path.exists(self.path(f)) for f in others)

    def check_inputs(self, steps):
        """Raises `PipelineError` if a step needs a file that neither the run directory nor an earlier step has."""
        missing = [
            f for step in steps for f in INPUTS.get(step, ())
            if not any(f in OUTPUTS[s] for s in steps if STEPS.index(s) < STEPS.index(step))
            and not os.path.exists(self.path(f))
        ]
        if missing:
            raise PipelineError(
                f"Step(s) {', '.join(steps)} need {', '.join(sorted(set(missing)))} in {self.root}, "
                "which an earlier step writes. Run the earlier steps first (--mode=all does all of them) "
                "or point --run_dir at a run directory that has them."
            )

    # --- which steps finished --------------------------------------------------
    def finished(self, step):
        """True if `step` completed in the run directory (its outputs and `<step>.json` exist)."""
        return all(os.path.exists(self.path(f)) for f in OUTPUTS[step] + (f"{step}.json",))

    def steps_left(self):
        """The pipeline steps without results (`<step>.json`) after the first with them: not run yet, or made stale."""
        done = [step for step in STEPS if os.path.exists(self.path(f"{step}.json"))]
        return [step for step in STEPS[STEPS.index(done[0]):] if step not in done] if done else []

    def resumable_prefix(self, steps):
        """Leading steps that an earlier, interrupted run finished: skipped when it is started again.

        Empty if every step finished: running them again would replace their
        outputs, which needs --overwrite (and then nothing is skipped). The first
        unfinished step must not have outputs yet (`check` refuses then).
        """
        if self.overwrite:
            return []
        done = []
        for step in steps:
            if not self.finished(step):
                break
            done.append(step)
        return done if len(done) < len(steps) else []

    # --- writing ----------------------------------------------------------------
    def begin(self, config, steps):
        """Before the first step: discards the checkpoints `--overwrite` replaces and the outputs `steps` make
        stale (`invalidate_later_steps`, whose result it returns); writes `config.json`."""
        if self.chief and self.overwrite:
            for step in steps:
                shutil.rmtree(self.path("checkpoints", step), ignore_errors=True)
        stale = self.invalidate_later_steps(steps) if self.chief else []
        if not os.path.exists(self.path("config.json")) or self.overwrite or self.holds_only_latency_table():
            atomic_write_json(self.out("config.json"), json.loads(config.to_json()))
        return stale

    def invalidate_later_steps(self, steps):
        """Removes the outputs of the pipeline steps after the first of `steps`; returns those `steps` do not redo.

        They were made from outputs that `steps` replace (a slim model retrained
        on the channels a redone sample step replaces): kept, they would be
        reported beside results they do not belong to, or, if this run fails
        before it redoes them, stay beside a config.json they were not made with.
        """
        redone = [s for s in steps if s in STEPS]
        if not redone:
            return []
        removed = []
        for step in STEPS[STEPS.index(redone[0]) + 1:]:
            paths = [self.path(f) for f in (*OUTPUTS[step], f"{step}.json", _started(step))]
            paths.append(self.path("checkpoints", step))
            if not any(os.path.lexists(p) for p in paths):
                continue
            for path in paths:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.remove(path)
            removed.append(step)
        return [step for step in removed if step not in steps]

    def start_step(self, step):
        """Marks the step's outputs as this run directory's own until `finish_step` (chief only).

        A `<step>.json` of an earlier run of the step goes: until this run
        finishes the step, the step did not finish (killed halfway, the same
        command then redoes it instead of taking half-replaced outputs for done).
        """
        if self.chief:
            atomic_write_text(self.path(_started(step)), "")
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path(f"{step}.json"))

    def finish_step(self, step, result):
        """Writes `<step>.json`, the step's last output; removes its marker and its checkpoints."""
        atomic_write_json(self.out(f"{step}.json"), result)
        if not self.chief:
            return
        os.remove(self.path(_started(step)))
        if step in TRAINING_STEPS:
            shutil.rmtree(self.path("checkpoints", step), ignore_errors=True)  # its outputs are written
            with contextlib.suppress(OSError):
                os.rmdir(self.path("checkpoints"))  # if no other step's checkpoints remain

    def save_model(self, model, name):
        """Saves a `.keras` file of the run directory atomically."""
        atomic_save_model(model, self.out(name))

    def load_json(self, name):
        """The content of a JSON file of the run directory, or None if there is none."""
        return read_json(self.path(name))


def _holder(path):
    """Who holds a lock file, as its content names them."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "which has not written its name into the lock file yet"


def _started(step):
    """The marker a step leaves in the run directory while it runs (removed when it finishes)."""
    return f".{step}.started"


def _lookup(tree, dotted):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _identity_value(tree, dotted):
    """`_lookup`, without the keys that do not change results (`NOT_IDENTITY`)."""
    value = _lookup(tree, dotted)
    if value is None:
        value = IDENTITY_DEFAULTS.get(dotted)
    if isinstance(value, dict):
        added = {k.rpartition(".")[2]: v for k, v in IDENTITY_DEFAULTS.items() if k.rpartition(".")[0] == dotted}
        value = {k: v for k, v in dict(added, **value).items() if f"{dotted}.{k}" not in NOT_IDENTITY}
    return value
