"""Atomic writes and pickle-free readers: an output is either the old file or the whole new one."""
import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or e} (is the directory writable, is the disk full?)") from e
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str):
    write_bytes(path, text.encode())


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def write_npz(path, **arrays):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def read_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temp directory beside `path`; on success it replaces `path` whole, else it is removed.
    So a reader sees the old directory or the complete new one, never a half-written mix."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
