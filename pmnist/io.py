"""Atomic writes and pickle-free readers: an output is either the old file or the whole new one."""
import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from pmnist.errors import DataError

# The only directories a stage may replace or delete in (relative to the working directory, the
# repository root under DVC): nothing built from a name in params can reach outside them.
OUTPUT_ROOTS = ("results", "data")


class WriteError(OSError):
    """An output could not be written (read-only directory, disk full); the old file is untouched."""


def _write_error(path, e):
    err = WriteError(f"cannot write {path}: {e.strerror or e} (is the directory writable, is the disk "
                     f"full?); the previous version, if any, is untouched")
    err.errno = e.errno
    return err


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(path, e) from e
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


def require_file(path, hint="run the stage that writes it first (dvc repro)") -> Path:
    """`path` as a Path if it is a file, else a FileNotFoundError naming it and what writes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {hint}")
    return path


def read_npz(path) -> dict:
    """The arrays of an .npz file; a DataError naming the file if it is not a readable npz."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}); rerun the stage that writes it") from None


def check_output_dir(path) -> Path:
    """`path` if it lies inside results/ or data/ of the working directory, else a DataError."""
    path = Path(path)
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if not any(resolved.is_relative_to(cwd / root) and resolved != cwd / root for root in OUTPUT_ROOTS):
        raise DataError(f"{path}: refusing to replace a directory outside {' or '.join(r + '/' for r in OUTPUT_ROOTS)}")
    return path


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temp directory beside `path`; on success it replaces `path` whole, else it is removed.
    So a reader sees the old directory or the complete new one, never a half-written mix."""
    import shutil

    path = check_output_dir(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o755)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous directory back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(path, e) from e
        raise
