"""What an input is: command-line arguments expanded into entries, each with a stable key.

    INPUT... -> expand_inputs -> [Entry(name, error, opener, span, text)] -> Entry.source()
             -> a path or the entry, which audio.iter_decoded decodes (reading.py, on its threads)

- A file is an entry as given (its `name` is the record's `path`); a URL (`s3://...`, `hf://...`,
  any protocol fsspec knows; engine/storage.py) likewise, read through fsspec; a URL with `*`,
  `?` or `[` in its path (not http(s)) is a glob pattern, each match expanded as an input.
- A directory is searched recursively for media files, Parquet files and WebDataset shards
  (sorted); a folder written by `datasets.Dataset.save_to_disk` is read as that dataset.
- A dataset file gives one entry per row or sample (engine/datasets.py): `.parquet`, `.arrow`
  (a stream file of save_to_disk), `.tar` (WebDataset: `__key__` plus an audio member).
- A manifest lists entries: `.txt` one path per line (`#` comments, blank lines skipped), `.jsonl`
  one object per line with a `path`, or NeMo's `audio_filepath` (relative to the manifest's
  folder) with optional `offset` and `duration` in seconds (that span of the file only: the
  entry is named `FILE#t=START,END`, after the media-fragment syntax) and `text`. A line that
  names no file (or is not JSON, or has an offset or duration that is not a finite number of
  seconds >= 0) is an entry with an `error` and becomes that entry's record as `MANIFEST:LINE`.
  START and END are exact (the manifest's decimals), so different spans have different names.
- Nothing unreadable stops a listing: a dataset file, shard or manifest that cannot be read is
  one entry with an `error` (the rest of its folder is listed), and so is an entry whose name is
  not UTF-8 text (named with `\\xNN` escapes: records are JSON). A folder's `results.parquet` (a
  run's own output) is not an input.
- `key` identifies the audio behind an entry however it is written (`a.wav`, `./a.wav`): a file
  listed twice is transcribed once, and `--resume` matches records to entries by it.
- `text` is an entry's reference transcript (a manifest's `text`, a dataset's text column, a
  WebDataset `.txt` member), which `whisper-nnx eval` scores against.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import datasets, storage
from .datasets import SourceOptions
from .entry import MEDIA_SUFFIXES, Entry, entry_key, open_url_or_path  # noqa: F401 - Entry, entry_key: re-exported

DATASET_SUFFIXES = {".parquet", ".arrow", ".tar"}
RUN_FILES = {"results.parquet"}  # what a run writes that a folder walk would take for a dataset
MAX_SECONDS = 1e9  # a manifest's offset or duration beyond this (about 31 years) is a mistake


def _exact(seconds: decimal.Decimal) -> str:
    """A number of seconds written in full, without trailing zeros (`2`, `1234.561`, `0.0000001`)."""
    text = format(seconds, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _span_name(path: str, offset: float, duration: Optional[float]) -> str:
    """`FILE#t=START[,END]`, START and END exact: the shortest decimals of the manifest's floats
    and their exact sum, so that different spans never share a name (nor a key)."""
    start = decimal.Decimal(repr(offset))
    if duration is None:
        return f"{path}#t={_exact(start)}"
    with decimal.localcontext(decimal.Context(prec=400)):  # exact: floats from 1e-324 to 1e9, 17 digits
        end = start + decimal.Decimal(repr(duration))
    return f"{path}#t={_exact(start)},{_exact(end)}"


def _seconds(item: dict, field: str, where: str) -> Optional[float]:
    """A manifest line's optional number of seconds (None when absent)."""
    value = item.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SECONDS:
        raise ValueError(f'{where}: "{field}" must be a finite number of seconds >= 0, got {value!r}')
    return float(value) + 0.0  # -0.0 -> 0.0


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
            yield from _guarded(arrow, _dataset_entries(arrow, options))
        return
    for name in storage.walk_files(folder):
        suffix = Path(name).suffix.lower()
        if suffix in MEDIA_SUFFIXES:
            yield Entry(name)
        elif suffix in (".parquet", ".tar") and Path(name).name not in RUN_FILES:
            yield from _guarded(name, _dataset_entries(name, options))  # one bad file: one error entry


def _guarded(name: str, entries: Iterator[Entry]) -> Iterator[Entry]:
    """`entries`, and where reading `name` fails (not a dataset, no audio column, a corrupt
    file, shard or manifest), one entry for `name` with the reason: its record says what went
    wrong (the entries listed before the failure stay)."""
    try:
        yield from entries
    except (OSError, ValueError, RuntimeError, tarfile.TarError) as err:
        reason = str(err).splitlines()[0] if str(err).strip() else ""
        yield Entry(name, f"{name}: cannot read it as an input list ({type(err).__name__}: {reason})")


def printable(text: str) -> str:
    """`text` as UTF-8-encodable text: bytes a file system or tar name could not decode as UTF-8
    (surrogate escapes) as `\\xNN`, other lone surrogates as `\\uNNNN`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8(entry: Entry) -> Entry:
    """`entry`, or where its name is not UTF-8 text (records are JSON: they could not be
    written), an error entry named printably; a text or an error made printable."""
    name, error, text = (None if x is None else printable(x) for x in (entry.name, entry.error, entry.text))
    if name == entry.name and error == entry.error and text == entry.text:
        return entry
    if name != entry.name and entry.error is None:
        error = f"{name}: the name is not UTF-8 text (shown with \\x escapes): rename it to transcribe it"
    return Entry(name, error, text=text) if error is not None else dataclasses.replace(entry, text=text)


def expand_inputs(inputs: Sequence[str], options: SourceOptions = SourceOptions()) -> Iterator[Entry]:
    """Entries of files as given, directories searched recursively (sorted), dataset files and
    manifests read row by row, in order. What cannot be read (a file, a shard, a manifest line, a
    name that is not UTF-8) is an entry with an `error` (its record says why); the rest goes on."""
    for item in inputs:
        for entry in _guarded(item, _expand_one(item, options)):
            yield _utf8(entry)


def _expand_one(item: str, options: SourceOptions) -> Iterator[Entry]:
    suffix = Path(item.split("#", 1)[0]).suffix.lower()
    if storage.is_glob_url(item) and not storage.is_file(item):  # hf://datasets/o/n/data/*.parquet
        matches = storage.glob_urls(item)
        if not matches:
            yield Entry(item, f"{item}: no file matches the pattern")
        for match in matches:  # one unreadable match: one error entry, the others go on
            yield from _guarded(match, _expand_one(match, options))
    elif storage.is_dir(item):
        yield from _folder_entries(item, options)
    elif suffix in DATASET_SUFFIXES and storage.is_file(item):
        yield from _dataset_entries(item, options)
    elif suffix == ".jsonl" and storage.is_file(item):
        for number, line in enumerate(storage.read_text(item, "surrogateescape").split("\n"), 1):
            if line.strip():
                yield _jsonl_entry(item, number, line, options.text_column)
    elif suffix == ".txt" and storage.is_file(item):
        yield from (Entry(line.strip()) for line in storage.read_text(item, "surrogateescape").split("\n")
                    if line.strip() and not line.strip().startswith("#"))
    else:
        yield Entry(item)  # a missing or odd file becomes an error record, not a crash
