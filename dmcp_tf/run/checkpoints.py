"""Checkpoints of a training run: atomic, verified, and tied to their config.

A checkpoint is one directory `ckpt-<step>` holding a `tf.train.Checkpoint` of the
training state (model variables with gate parameters and batch-norm statistics,
both optimisers' variables with their step counters, random-generator states) and
a `manifest.json` with the step, a fingerprint of what produced it, and the
SHA-256 of every file. It is written under a temporary name and renamed into
place once complete, so a crash while saving leaves no half-written checkpoint;
a checkpoint whose files were damaged afterwards fails the hash check, is reported
and skipped for the previous one, and is never loaded.

Example:
    manager = CheckpointManager("run/checkpoints/search",
                                {"model": model, "optimizer": model.optimizer},
                                identity={"lr": 0.1})
    restored = manager.restore()          # None on a fresh start
    start = restored.step if restored else 0
    model.fit(..., callbacks=[CheckpointCallback(manager, every_steps=100)])
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from dmcp_tf.io_utils import file_sha256
from dmcp_tf.search.supernet import seed_generator_states  # noqa: F401 (its old home; checkpoints hold these)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE_PREFIX = "state"
_NAME = re.compile(r"^ckpt-(\d+)$")
_TMP_PREFIX = ".tmp-ckpt-"


class CheckpointError(ValueError):
    """No usable checkpoint; the message says what was wrong and what to do."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written by another config or for another model."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files are missing, truncated or altered."""


@dataclasses.dataclass
class Restored:
    """What `CheckpointManager.restore` loaded.

    Attributes:
        step: the training step the checkpoint was taken after.
        path: the checkpoint directory.
        extra: the JSON data saved with it (e.g. the history so far).
        skipped: corrupt checkpoints that were reported and passed over.
    """

    step: int
    path: str
    extra: dict
    skipped: list


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path):
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _variables(obj):
    if isinstance(obj, (list, tuple)):
        return [v for item in obj for v in _variables(item)]
    if isinstance(obj, dict):
        return [v for key in sorted(obj) for v in _variables(obj[key])]
    if hasattr(obj, "variables") and not isinstance(obj, (tf.Variable, keras.Variable)):
        return list(obj.variables)
    return [obj]


def model_signature(objects):
    """Shapes and dtypes of every variable of `objects`, in order (names for messages only).

    Names are not compared: Keras numbers unnamed layers per process, so the same
    model can get other names when rebuilt.
    """
    signature = []
    for name in sorted(objects):
        for index, v in enumerate(_variables(objects[name])):
            dtype = getattr(v.dtype, "name", v.dtype)  # Keras: a string; TensorFlow: a DType
            signature.append([name, index, getattr(v, "path", v.name), list(v.shape), str(dtype)])
    return signature


def _signature_key(signature):
    return [[name, index, shape, dtype] for name, index, _, shape, dtype in signature]


def _fingerprint(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def list_checkpoints(directory):
    """`[(step, path)]` of the committed checkpoints in `directory`, oldest first (intact or not)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match and os.path.isdir(os.path.join(directory, name)):
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


class CheckpointManager:
    """Numbered, verified checkpoints of training state in one directory.

    Args:
        directory: where the `ckpt-<step>` directories live.
        objects: name -> what to save: Keras models and optimizers, variables,
            lists of variables (anything `tf.train.Checkpoint` tracks).
        identity: JSON data that defines the run (config values that change the
            result); a checkpoint with another identity is refused.
        keep: how many checkpoints to keep (older ones are deleted after a save).
        is_chief: under `MultiWorkerMirroredStrategy` every worker saves (the
            variables are read collectively), but only the chief keeps what it
            wrote; the others write to a temporary directory and delete it.
        log: where warnings go (corrupt checkpoints skipped, resumption).
    """

    def __init__(self, directory, objects, *, identity, keep=3, is_chief=True, log=None):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}.")
        self.directory = os.fspath(directory)
        self.objects = dict(objects)
        self.checkpoint = tf.train.Checkpoint(**self.objects)
        self.identity = json.loads(json.dumps(identity))
        self.signature = model_signature(self.objects)
        self.keep = int(keep)
        self.is_chief = is_chief
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.last_saved_step = None

    # --- listing -------------------------------------------------------------
    def checkpoints(self):
        """`[(step, path)]` of the committed checkpoints, oldest first (intact or not)."""
        return list_checkpoints(self.directory)

    def _path(self, step):
        return os.path.join(self.directory, f"ckpt-{int(step):09d}")

    # --- saving --------------------------------------------------------------
    def save(self, step, extra=None):
        """Writes the state after `step` steps; returns the checkpoint directory (None off the chief)."""
        step = int(step)
        manifest = {
            "format": FORMAT_VERSION, "step": step, "created": time.time(),
            "identity": self.identity, "fingerprint": _fingerprint(self.identity),
            "signature": self.signature, "extra": extra or {},
        }
        if not self.is_chief:
            scratch = tempfile.mkdtemp(prefix="dmcp-worker-ckpt-")
            try:
                self.checkpoint.write(os.path.join(scratch, STATE_PREFIX))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            self.last_saved_step = step
            return None
        os.makedirs(self.directory, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=self.directory, prefix=f"{_TMP_PREFIX}{step:09d}-")
        try:
            self.checkpoint.write(os.path.join(tmp, STATE_PREFIX))
            files = {}
            for name in sorted(os.listdir(tmp)):
                path = os.path.join(tmp, name)
                _fsync_file(path)
                files[name] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
            manifest["files"] = files
            with open(os.path.join(tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            # Checkpoints at or after this step belong to an abandoned future (we resumed
            # from an earlier one, e.g. because they were corrupt): replace them.
            for other_step, other in self.checkpoints():
                if other_step >= step:
                    shutil.rmtree(other)
            final = self._path(step)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for _, old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.last_saved_step = step
        return final

    # --- checking and restoring -----------------------------------------------
    def verify(self, path):
        """Returns the manifest of checkpoint `path`; raises `CorruptCheckpointError` if a file is bad."""
        manifest_path = os.path.join(path, MANIFEST)
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            files = manifest["files"]
            int(manifest["step"])
        except FileNotFoundError as e:
            raise CorruptCheckpointError(f"checkpoint {path} has no {MANIFEST}") from e
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpointError(f"checkpoint {path} has an unreadable {MANIFEST} ({e})") from e
        if manifest.get("format") != FORMAT_VERSION:
            raise CorruptCheckpointError(
                f"checkpoint {path} has format {manifest.get('format')!r}; this version reads format {FORMAT_VERSION}")
        for name, expected in files.items():
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                raise CorruptCheckpointError(f"checkpoint {path} is missing its file {name}")
            size = os.path.getsize(file)
            if size != expected["bytes"]:
                raise CorruptCheckpointError(
                    f"checkpoint file {file} is truncated or altered: {size} bytes, {expected['bytes']} when written")
            if file_sha256(file) != expected["sha256"]:
                raise CorruptCheckpointError(
                    f"checkpoint file {file} is corrupt: its SHA-256 differs from the one recorded when it was written")
        return manifest

    def check_identity(self, manifest, path):
        """Raises `CheckpointMismatchError` if `manifest` was written by another config or model."""
        if manifest.get("fingerprint") != _fingerprint(self.identity):
            old, new = _flatten(manifest.get("identity", {})), _flatten(self.identity)
            changed = [f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now"
                       for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise CheckpointMismatchError(
                f"Checkpoint {path} was written by another configuration ({'; '.join(changed) or 'unknown'}), "
                "so this run cannot continue from it. Restore the original settings, use another run "
                "directory, or pass --overwrite to discard the checkpoints and start over."
            )
        theirs = manifest.get("signature", [])
        if _signature_key(theirs) != _signature_key(self.signature):
            diffs = [f"{a[2]} {a[3]} {a[4]} in the checkpoint, {b[2]} {b[3]} {b[4]} now"
                     for a, b in zip(theirs, self.signature) if a[:2] + a[3:] != b[:2] + b[3:]][:3]
            if len(theirs) != len(self.signature):
                diffs.append(f"{len(theirs)} variables in the checkpoint, {len(self.signature)} now")
            raise CheckpointMismatchError(
                f"Checkpoint {path} holds another model ({'; '.join(diffs)}), so this run cannot continue from "
                "it. Use another run directory, or pass --overwrite to discard the checkpoints and start over."
            )

    def restore(self):
        """Loads the newest intact checkpoint; returns a `Restored`, or None if there is none.

        Corrupt checkpoints are reported through `log` and skipped for the previous
        one. Raises `CheckpointMismatchError` if the newest intact checkpoint was
        written by another config or model, and `CheckpointError` if checkpoints
        exist but none is intact.
        """
        skipped = []
        for step, path in reversed(self.checkpoints()):
            try:
                manifest = self.verify(path)
                if int(manifest["step"]) != step:
                    raise CorruptCheckpointError(f"checkpoint {path} says it holds step {manifest['step']}")
            except CorruptCheckpointError as error:
                self.log(f"WARNING: {error}; it is skipped and not loaded. Trying the previous checkpoint.")
                skipped.append(str(error))
                continue
            self.check_identity(manifest, path)
            try:
                self.checkpoint.read(os.path.join(path, STATE_PREFIX)).assert_consumed()
            except (tf.errors.OpError, AssertionError, ValueError) as error:
                # The hashes matched, so this is not damage after writing: refuse it outright.
                raise CheckpointMismatchError(
                    f"Checkpoint {path} does not fit this model ({error}). Use another run directory, "
                    "or pass --overwrite to discard the checkpoints and start over.") from error
            self.last_saved_step = step
            return Restored(step=step, path=path, extra=manifest.get("extra", {}), skipped=skipped)
        if skipped:
            raise CheckpointError(
                f"Every checkpoint in {self.directory} is damaged ({'; '.join(skipped)}). Delete that "
                "directory (or pass --overwrite) to start this step over."
            )
        return None

    def clean_temporary(self):
        """Deletes leftovers of saves that were interrupted (chief only)."""
        if self.is_chief and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name.startswith(_TMP_PREFIX):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint every `every_steps` training steps and at every epoch end.

    The step is the model optimizer's `iterations` (restored with the rest), so a
    resumed run keeps the same schedule. The per-epoch logs are kept in the
    checkpoint (`extra["history"]`), so the history of a resumed run is complete.

    Args:
        manager: a `CheckpointManager`.
        every_steps: interval in steps; 0 saves at epoch ends only.
        history: the history restored with the checkpoint, if any.
        extra: more JSON data to store with every checkpoint.
    """

    def __init__(self, manager, every_steps, history=None, extra=None):
        super().__init__()
        self.manager = manager
        self.every_steps = int(every_steps)
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.extra = dict(extra or {})

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _save(self, force=False):
        step = self._step()
        if step and (force or step != self.manager.last_saved_step):
            self.manager.save(step, dict(self.extra, history=self.history))

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.params.get("steps", -1) - 1 or not self.every_steps:
            return  # at the last batch, the epoch-end save follows (with this epoch's logs)
        # A multiple of `every_steps` was reached since the last save (robust to steps_per_execution).
        if self._step() // self.every_steps > (self.manager.last_saved_step or 0) // self.every_steps:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(np.asarray(value)))
        self._save(force=True)
