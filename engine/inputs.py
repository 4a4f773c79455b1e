"""What an input is: command-line arguments expanded into entries, each with a stable key.

    INPUT... -> expand_inputs -> [Entry(name, key, error)] -> Entry.open() -> bytes to decode

- A file is an entry as given (its `name` is the record's `path`).
- A directory is searched recursively for media files (sorted).
- A manifest lists entries: `.txt` one path per line (`#` comments, blank lines skipped), `.jsonl`
  a `path` per line; a `.jsonl` line without one (or not JSON) is an entry that names no file, with
  an `error`, and becomes that entry's record as `MANIFEST:LINE`.
- `key` identifies the file behind an entry however it is written (`a.wav`, `./a.wav`): a file
  listed twice is transcribed once, and `--resume` matches records to entries by it.

A new kind of source (a dataset row, a URL) is a new way to make entries here plus an `open`
that returns a binary file object; `audio.load_audio` decodes either.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence

MEDIA_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm",
                  ".mp4", ".mkv", ".mov", ".avi", ".aiff", ".aif", ".amr", ".3gp"}


def entry_key(name: str) -> str:
    """The identity of the file behind an entry or a record's `path`: its absolute path."""
    return os.path.abspath(name)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One input entry: `name` as given (a record's `path`), or an entry naming no file."""

    name: str
    error: Optional[str] = None  # why this entry names no file (a bad manifest line)

    @property
    def key(self) -> str:
        return entry_key(self.name)

    def open(self) -> BinaryIO:
        """The entry's bytes (a missing or unreadable file raises OSError here; the decoder
        reports it as the entry's error when given the name instead)."""
        return open(self.name, "rb")


def _jsonl_entry(manifest: Path, number: int, line: str) -> Entry:
    name = f"{manifest}:{number}"
    try:
        item = json.loads(line)
    except ValueError as err:
        return Entry(name, f"{name}: manifest line is not JSON ({err})")
    if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"].strip():
        return Entry(name, f'{name}: manifest line has no "path" string')
    return Entry(item["path"])


def expand_inputs(inputs: Sequence[str]) -> Iterator[Entry]:
    """Entries of files as given, directories searched recursively (sorted) and manifests read
    line by line, in order."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from (Entry(str(p)) for p in sorted(path.rglob("*"))
                        if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        elif path.suffix == ".jsonl" and path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    yield _jsonl_entry(path, number, line)
        elif path.suffix == ".txt" and path.is_file():
            yield from (Entry(line.strip()) for line in path.read_text(encoding="utf-8").splitlines()
                        if line.strip() and not line.strip().startswith("#"))
        else:
            yield Entry(item)  # a missing or odd file becomes an error record, not a crash
