"""Files on disk: writes a crash never leaves half done, and where a transcript's files go.

- `atomic_write_text` / `atomic_write_pieces` (streamed): a temp file in the same directory,
  fsynced, renamed into place, the directory fsynced (a reader sees the old file or the new one,
  never half of one).
- `fsync_directory`: make a rename or unlink durable.
- `output_stem` / `OutputNames`: a transcript's per-format files are `<stem>.<format>` (as
  openai-whisper and WhisperX name them), the stem carrying the input's identity where the file
  name lacks it (`train.parquet:17` -> `train-17`, `shard.tar:key` -> `shard-key`, a NeMo span
  `talk.wav#t=1.5,3` -> `talk-1.5-3`). Layout "tree" keeps the input's folders (relative to the
  input folder it was found in, else a relative name as written without `..`; an absolute path or
  URL outside every input folder keeps no folders);
  "flat" puts every file in the output folder. A URL's query is left out (`https://h/a.wav?X-Amz-...`
  -> `a`). Two entries wanting one name: the first to claim it
  keeps it, the next gets `stem~2`, then `stem~3`... A name is taken when a record already lists
  it (records keep their `files`: a resumed run keeps every earlier name) or when a file of that
  name is there (claimed by creating it exclusively, so processes sharing a folder never write
  one file); a file that belongs to another record is never written over.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Iterable, Optional, Sequence


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + rename: readers never see half a file,
    and the file and the rename are fsynced before this returns (a crash keeps one or the other).

    The temp file is made with open(..., "x"), so the result gets the usual permissions (0666
    less the umask) rather than mkstemp's 0600. Its name, `.NAME.<8 hex>.tmp`, keeps at most the
    first 100 bytes of NAME: it fits the file system's 255 bytes whatever `path` is named.
    """
    atomic_write_pieces(path, (text,))


def atomic_write_pieces(path: Path, pieces: Iterable[str]) -> None:
    """`atomic_write_text` of the concatenated `pieces`, written one at a time as they come (a
    file too big to hold in memory; `pieces` may read `path` itself, which is replaced only at
    the end)."""
    path = Path(path)
    short = path.name.encode("utf-8", "surrogateescape")[:100].decode("utf-8", "ignore") or "_"
    while True:
        tmp = path.parent / f".{short}.{secrets.token_hex(4)}.tmp"
        try:
            handle = open(tmp, "x", encoding="utf-8")
            break
        except FileExistsError:
            continue
    try:
        with handle:
            for piece in pieces:
                handle.write(piece)
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


LAYOUTS = ("tree", "flat")
_STRIPPED = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm", ".mp4", ".mkv", ".mov",
             ".avi", ".aiff", ".aif", ".amr", ".3gp", ".parquet", ".arrow", ".tar"}
_CONTAINER = re.compile(r"^(.*\.(?:parquet|arrow|tar)):(.+)$", re.IGNORECASE)  # a row, a shard's key
_SPAN = re.compile(r"^(.*)#t=([0-9.e+-]+)(?:,([0-9.e+-]+))?$")  # a NeMo manifest span


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown output layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return layout


def _component(text: str) -> str:
    """One path component: no separator or NUL, not hidden-empty, at most ~200 bytes."""
    text = text.replace("/", "_").replace("\0", "_").strip() or "_"
    if len(text.encode("utf-8", "surrogateescape")) > 200:
        digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        text = text.encode("utf-8", "surrogateescape")[:180].decode("utf-8", "ignore") + "-" + digest
    return text


def _folders(path: str, roots: Sequence[str]) -> list[str]:
    """The folders of `path` kept under the output folder (tree layout)."""
    roots = [r.rstrip("/") if "://" in r else os.path.normpath(r) for r in roots]  # as folder walks name them
    for root in sorted((r for r in roots if r and r != "."), key=len, reverse=True):
        if path.startswith(root + "/"):
            path = path[len(root) + 1:]
            break
    else:
        if path.startswith("/") or "://" in path:  # outside every input folder: no folders kept
            return []
    return [part for part in path.split("/")[:-1] if part not in ("", ".", "..")]


def output_stem(path: str, layout: str = "tree", roots: Sequence[str] = ()) -> str:
    """The name (relative to the output folder, without the format) that the files of entry `path`
    get unless another entry claimed it first; `roots`: input folders (tree names are relative to
    the one an entry was found in)."""
    ident = None
    if "://" in path:  # a URL's query (a presigned URL's signature, already REDACTED) is no part of a name
        path = re.sub(r"\?[^#]*", "", path, count=1)
    span, container = _SPAN.match(path), _CONTAINER.match(path)
    if span:
        path, ident = span.group(1), "-".join(x for x in span.group(2, 3) if x)
    elif container:
        path, ident = container.group(1), container.group(2)
    base = os.path.basename(path.rstrip("/"))
    stem, suffix = os.path.splitext(base)
    stem = stem if suffix.lower() in _STRIPPED and stem else base
    stem = _component(stem if ident is None else f"{stem}-{ident}")
    folders = [_component(f) for f in _folders(path, roots)] if check_layout(layout) == "tree" else []
    return "/".join([*folders, stem])


class OutputNames:
    """The claims on names in one output folder (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, layout: str = "tree", roots: Sequence[str] = ()):
        self.out, self.layout, self.roots = Path(out_dir), check_layout(layout), tuple(roots)
        self.claimed: dict[str, str] = {}  # name (without format) -> the entry holding it

    def reserve(self, records: Iterable[dict]) -> None:
        """The names earlier records list are theirs."""
        for record in records:
            for name in record.get("files") or ():
                self.claimed.setdefault(os.path.splitext(name)[0], record.get("row") or record["path"])

    def claim(self, path: str, formats: Sequence[str], owner: Optional[str] = None) -> str:
        """A name for entry `path`'s files, taken from here on; `owner`: the entry's identity when
        its name is not (a dataset row named by --id-column: `FILE:ROW`)."""
        base = output_stem(path, self.layout, self.roots)
        owner = owner or path
        for n in range(1, 1_000_000):
            name = base if n == 1 else f"{base}~{n}"
            holder = self.claimed.get(name)
            if holder == owner or (holder is None and self._take(name, formats)):
                self.claimed[name] = owner
                return name
        raise RuntimeError(f"{path}: no free output name after {base}~999999")

    def _take(self, name: str, formats: Sequence[str]) -> bool:
        files = [output_path(self.out, name, fmt) for fmt in formats]
        if any(f.exists() for f in files[1:]):
            return False
        files[0].parent.mkdir(parents=True, exist_ok=True)
        try:  # exclusive: another process sharing the folder gets the next name
            os.close(os.open(files[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            return False
        return True


def output_path(output_dir: str | os.PathLike, stem: str, fmt: str) -> Path:
    """Where a transcript's file of format `fmt` goes: `output_dir/stem.fmt`."""
    return Path(output_dir) / f"{stem}.{fmt}"
