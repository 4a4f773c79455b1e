"""What an input is: command-line arguments expanded into entries, each with a stable key.

    INPUT... -> expand_inputs -> [Entry(name, error, opener, span, text)] -> Entry.source()
             -> a path or the entry, which audio.iter_decoded decodes (reading.py, on its threads)

- A file is an entry as given (its `name` is the record's `path`); a URL (`s3://...`, any
  protocol fsspec knows; engine/storage.py) likewise, read through fsspec.
- A directory is searched recursively for media files, Parquet files and WebDataset shards
  (sorted); a folder written by `datasets.Dataset.save_to_disk` is read as that dataset.
- A dataset file gives one entry per row or sample (engine/datasets.py): `.parquet`, `.arrow`
  (a stream file of save_to_disk), `.tar` (WebDataset: `__key__` plus an audio member).
- A manifest lists entries: `.txt` one path per line (`#` comments, blank lines skipped), `.jsonl`
  one object per line with a `path`, or NeMo's `audio_filepath` (relative to the manifest's
  folder) with optional `offset` and `duration` in seconds (that span of the file only: the
  entry is named `FILE#t=START,END`, after the media-fragment syntax) and `text`. A line that
  names no file (or is not JSON) is an entry with an `error` and becomes that entry's record as
  `MANIFEST:LINE`.
- `key` identifies the audio behind an entry however it is written (`a.wav`, `./a.wav`): a file
  listed twice is transcribed once, and `--resume` matches records to entries by it.
- `text` is an entry's reference transcript (a manifest's `text`, a dataset's text column, a
  WebDataset `.txt` member), which `whisper-nnx eval` scores against.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import datasets, storage
from .datasets import SourceOptions
from .entry import MEDIA_SUFFIXES, Entry, entry_key, open_url_or_path  # noqa: F401 - Entry, entry_key: re-exported

DATASET_SUFFIXES = {".parquet", ".arrow", ".tar"}


def _span_name(path: str, offset: float, duration: Optional[float]) -> str:
    if duration is None:
        return f"{path}#t={offset:g}"
    return f"{path}#t={offset:g},{offset + duration:g}"


def _seconds(item: dict, field: str, where: str) -> Optional[float]:
    """A manifest line's optional number of seconds (None when absent)."""
    value = item.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f'{where}: "{field}" must be a number of seconds >= 0, got {value!r}')
    return float(value)


def _jsonl_entry(manifest: str, number: int, line: str, text_field: str) -> Entry:
    name = f"{manifest}:{number}"
    try:
        item = json.loads(line)
    except ValueError as err:
        return Entry(name, f"{name}: manifest line is not JSON ({err})")
    if not isinstance(item, dict):
        return Entry(name, f'{name}: manifest line has no "path" or "audio_filepath" string')
    text = item.get(text_field) if isinstance(item.get(text_field), str) else None
    path = item.get("path")
    if not isinstance(path, str) or not path.strip():
        path = item.get("audio_filepath")  # NeMo: relative to the manifest's folder
        if not isinstance(path, str) or not path.strip():
            return Entry(name, f'{name}: manifest line has no "path" or "audio_filepath" string', text=text)
        if not storage.is_url(path) and not os.path.isabs(path):
            path = storage.join(storage.parent(manifest), path)
    try:
        offset = _seconds(item, "offset", name) or 0.0
        duration = _seconds(item, "duration", name)
    except ValueError as err:
        return Entry(name, str(err), text=text)
    if duration is not None and "offset" not in item:
        duration = None  # NeMo writes every file's full duration: without an offset it is the whole file
    if not offset and duration is None:
        return Entry(path, text=text)
    return Entry(_span_name(path, offset, duration), opener=functools.partial(open_url_or_path, path),
                 offset_s=offset, duration_s=duration, text=text)


def _dataset_entries(name: str, options: SourceOptions) -> Iterator[Entry]:
    suffix = Path(name).suffix.lower()
    if suffix == ".tar":
        yield from datasets.webdataset_entries(name, options.text_column)
    else:
        yield from datasets.TABLES.open("arrow" if suffix == ".arrow" else "parquet", name, options).entries()


def _folder_entries(folder: str, options: SourceOptions) -> Iterator[Entry]:
    saved = datasets.saved_dataset_files(folder) if not storage.is_url(folder) else None
    if saved is not None:
        for arrow in saved:
            yield from _dataset_entries(arrow, options)
        return
    for name in storage.walk_files(folder):
        suffix = Path(name).suffix.lower()
        if suffix in MEDIA_SUFFIXES:
            yield Entry(name)
        elif suffix in (".parquet", ".tar"):
            yield from _dataset_entries(name, options)


def _guarded(name: str, entries: Iterator[Entry]) -> Iterator[Entry]:
    """`entries`, and where reading `name` fails (not a dataset, no audio column, a corrupt
    file or manifest), one entry for `name` with the reason: its record says what went wrong."""
    try:
        yield from entries
    except (OSError, ValueError, RuntimeError) as err:
        yield Entry(name, f"{name}: cannot read it as an input list ({type(err).__name__}: {str(err).splitlines()[0]})")


def expand_inputs(inputs: Sequence[str], options: SourceOptions = SourceOptions()) -> Iterator[Entry]:
    """Entries of files as given, directories searched recursively (sorted), dataset files and
    manifests read row by row, in order."""
    for item in inputs:
        yield from _guarded(item, _expand_one(item, options))


def _expand_one(item: str, options: SourceOptions) -> Iterator[Entry]:
    suffix = Path(item.split("#", 1)[0]).suffix.lower()
    if storage.is_dir(item):
        yield from _folder_entries(item, options)
    elif suffix in DATASET_SUFFIXES and storage.is_file(item):
        yield from _dataset_entries(item, options)
    elif suffix == ".jsonl" and storage.is_file(item):
        for number, line in enumerate(storage.read_text(item).splitlines(), 1):
            if line.strip():
                yield _jsonl_entry(item, number, line, options.text_column)
    elif suffix == ".txt" and storage.is_file(item):
        yield from (Entry(line.strip()) for line in storage.read_text(item).splitlines()
                    if line.strip() and not line.strip().startswith("#"))
    else:
        yield Entry(item)  # a missing or odd file becomes an error record, not a crash
