"""Files on disk: writes a crash never leaves half done, and where a transcript's files go.

- `atomic_write_text`: a temp file in the same directory, fsynced, renamed into place, the
  directory fsynced (a reader sees the old file or the new one, never half of one).
- `fsync_directory`: make a rename or unlink durable.
- `output_stem` / `output_path`: a transcript's per-format files are `<stem>-<hash8>.<format>`,
  the hash of the input's full path telling apart equal names in two folders.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + rename: readers never see half a file,
    and the file and the rename are fsynced before this returns (a crash keeps one or the other).

    The temp file is made with open(..., "x"), so the result gets the usual permissions (0666
    less the umask) rather than mkstemp's 0600.
    """
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            handle = open(tmp, "x", encoding="utf-8")
            break
        except FileExistsError:
            continue
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (a crash cannot bring the old entry back)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def output_stem(path: str) -> str:
    """File stem plus a short hash of the full path, so equal names in two folders differ."""
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    return f"{Path(path).stem}-{digest}"


def output_path(output_dir: str | os.PathLike, stem: str, fmt: str) -> Path:
    """Where a transcript's file of format `fmt` goes: `output_dir/stem.fmt`."""
    return Path(output_dir) / f"{stem}.{fmt}"
