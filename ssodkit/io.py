"""Small file helpers shared across ssodkit.

Run folders are read by other processes (TensorBoard, a user's `cat`, a resumed run) while
training writes them, so files are replaced atomically: a reader sees the old or the new
content, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_FILE_MODE = 0o644


def _json_default(obj: Any) -> Any:
    """Serialise the non-JSON types ssodkit produces (numpy/torch scalars, arrays, paths)."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "model_dump"):  # pydantic models
        return obj.model_dump(mode="json")
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON to `path` atomically (temp file in the same dir, fsync, replace).

    The temp file lives next to the target so that `os.replace` stays on one file system
    and is atomic. Missing parent folders are created. Returns the path written.
    """
    # json.dumps, not json.dump: the same text, but dump streams through the pure-Python
    # encoder, 5-10× slower on a large results list (the C encoder only serves dumps)
    return _write_atomic(path, lambda f: f.write(json.dumps(obj, indent=indent, default=_json_default)))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically (see `write_json_atomic`)."""
    return _write_atomic(path, lambda f: f.write(text.rstrip("\n")))


def _write_atomic(path: str | os.PathLike[str], write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp_name, _FILE_MODE)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort because not every OS can open a directory."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
