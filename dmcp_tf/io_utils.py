"""Atomic file writes: a reader never sees a half-written file or directory.

Files and directories get the permissions of a plain `open`/`mkdir` under the
process umask (temporary files are created private, then opened up).
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

_STALE_PREFIX = ".tmp-"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale(folder, is_stale):
    """Removes what a killed earlier write left in `folder` (names for which `is_stale` is true)."""
    for name in os.listdir(folder):
        if is_stale(name):
            target = os.path.join(folder, name)
            if os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(target)


def atomic_write_bytes(path, data):
    """Writes `data` to `path` through a temporary file in the same folder."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    # mkstemp names are the prefix, 8 random characters and the suffix.
    _remove_stale(folder, lambda name: name.startswith(_STALE_PREFIX) and name.endswith(base)
                  and len(name) == len(_STALE_PREFIX) + 8 + len(base))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_STALE_PREFIX, suffix=base)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """Writes a UTF-8 text file atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    """Writes `obj` as indented, key-sorted JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    """The content of the JSON file `path`, or None if there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def atomic_save_model(model, path):
    """Saves a Keras model as a `.keras` file atomically (Keras needs the suffix on the temporary name)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary directory that replaces `path` only if the block succeeds.

    Temporary directories an earlier, killed attempt left beside `path` are removed first.

    Example:
        with atomic_directory("runs/x/saved_model") as tmp:
            model.export(tmp)
    """
    path = os.fspath(path).rstrip("/")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    prefix = _STALE_PREFIX + os.path.basename(path)
    _remove_stale(parent, lambda name: name.startswith(prefix))
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path):
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
