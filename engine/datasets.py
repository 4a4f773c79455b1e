"""Rows of speech datasets as input entries: Parquet files (the layout `datasets` writes with
`to_parquet`, and the Hub's Parquet files), folders saved by `Dataset.save_to_disk` (Arrow
stream files), and WebDataset `.tar` shards.

    data.parquet -> TableRows (row groups, read lazily) -> Entry per row, its opener reading
                    that row's audio bytes when the decoder's turn comes

Listing reads only the small columns (the id and the reference text); a row's audio is read
with its row group when the decoder first asks for a row of it, and at most `CACHED_GROUPS`
groups of audio are held per file: a corpus larger than memory streams through. The audio
column holds `{bytes, path}` structs (the `datasets` Audio feature) or plain binary: it is the
column the schema's `huggingface` metadata declares as Audio, else the first struct column with
a `bytes` field, else a binary column named `audio`; `--audio-column` names it outright. A row
with null bytes is read from its `path` (relative to the dataset's folder).

Record names (`path` in results.jsonl, the key `--resume` matches): `FILE:ROW` (0-based over
the whole file), or the row's `--id-column` value; `SHARD:KEY` for a WebDataset sample
(`__key__`: the member name up to the first dot of its file name).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import os
import tarfile
import threading
from pathlib import PurePosixPath
from typing import Callable, Iterator, Optional

from .audio import AudioDecodeError, named_stream
from .entry import MEDIA_SUFFIXES, Entry
from .storage import is_url, join, open_binary, parent

CACHED_GROUPS = 2  # row groups of audio held per file (the prefetcher reads rows in order)
TEXT_FIELDS = ("text",)  # default reference-text column / WebDataset member / manifest field


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which dataset columns hold the audio, the record id and the reference text (None: detect
    the audio column; no id column: FILE:ROW names; a missing text column: no references)."""

    audio: Optional[str] = None
    id: Optional[str] = None
    text: str = "text"


def audio_column(schema, wanted: Optional[str], where: str) -> str:
    """The column of `schema` (pyarrow) that holds the audio; ValueError when there is none."""
    import pyarrow as pa

    if wanted is not None:
        if wanted not in schema.names:
            raise ValueError(f"{where}: no column {wanted!r} (columns: {', '.join(schema.names)})")
        return wanted
    metadata = (schema.metadata or {}).get(b"huggingface")
    if metadata:
        features = json.loads(metadata).get("info", {}).get("features", {})
        for name, feature in features.items():
            if isinstance(feature, dict) and feature.get("_type") == "Audio" and name in schema.names:
                return name
    for field in schema:
        if pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0:
            return field.name
    if "audio" in schema.names and pa.types.is_binary(schema.field("audio").type):
        return "audio"
    raise ValueError(f"{where}: no audio column found (columns: {', '.join(schema.names)}); "
                     "name it with --audio-column")


class TableRows:
    """A table read in groups (a Parquet file's row groups; one memory-mapped Arrow file): entries
    for its rows, and their audio on demand (thread-safe, `CACHED_GROUPS` groups of audio cached)."""

    def __init__(self, kind: str, name: str, schema, group_sizes: list[int],
                 read_group: Callable[[int, list[str]], object], columns: Columns):
        self.kind, self.name, self.schema, self.columns = kind, name, schema, columns
        self.group_sizes, self.read_group = group_sizes, read_group
        self.audio = audio_column(schema, columns.audio, name)
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        _register(self)

    def entries(self) -> Iterator[Entry]:
        if self.columns.id is not None and self.columns.id not in self.schema.names:
            raise ValueError(f"{self.name}: no id column {self.columns.id!r} (columns: {', '.join(self.schema.names)})")
        small = [c for c in (self.columns.id, self.columns.text) if c is not None and c in self.schema.names]
        row = 0
        for group, size in enumerate(self.group_sizes):
            table = self.read_group(group, small) if small else None
            ids = table.column(self.columns.id).to_pylist() if self.columns.id else None
            texts = table.column(self.columns.text).to_pylist() if self.columns.text in small else None
            for i in range(size):
                name = f"{self.name}:{row}" if ids is None else str(ids[i])
                text = None if texts is None or texts[i] is None else str(texts[i])
                if ids is not None and ids[i] is None:
                    yield Entry(f"{self.name}:{row}", f"{self.name}:{row}: the id column {self.columns.id!r} is null",
                                text=text)
                else:
                    # a module function of plain values: the entry pickles (Ray ships entries to its actors)
                    opener = functools.partial(open_table_row, self.kind, self.name, self.audio, group, i, name)
                    yield Entry(name, opener=opener, text=text)
                row += 1

    def _audio_of(self, group: int):
        with self._lock:
            if group in self._cache:
                self._cache.move_to_end(group)
                return self._cache[group]
            column = self.read_group(group, [self.audio]).column(self.audio)
            self._cache[group] = column
            while len(self._cache) > CACHED_GROUPS:
                self._cache.popitem(last=False)
            return column

    def open_row(self, group: int, index: int, name: str):
        """Row `index` of group `group`'s audio: a binary stream of its bytes, or its path."""
        value = self._audio_of(group)[index].as_py()
        if isinstance(value, (bytes, bytearray)):
            return named_stream(bytes(value), name)
        if isinstance(value, dict):
            if value.get("bytes"):
                return named_stream(value["bytes"], name)
            if value.get("path"):
                path = value["path"]
                return path if is_url(path) or os.path.isabs(path) else join(parent(self.name), path)
        raise AudioDecodeError(name, f"the row has no audio (column {self.audio!r} is empty)")


_TABLES: collections.OrderedDict = collections.OrderedDict()  # (kind, path, audio column) -> TableRows
_TABLES_LOCK = threading.Lock()
OPEN_TABLES = 16  # tables kept open per process (file handles, cached row groups)


def _register(rows: TableRows) -> None:
    with _TABLES_LOCK:
        _TABLES[(rows.kind, rows.name, rows.audio)] = rows
        while len(_TABLES) > OPEN_TABLES:
            _TABLES.popitem(last=False)


def open_table_row(kind: str, path: str, audio: str, group: int, index: int, name: str):
    """An entry's opener: row `index` of row group `group` of the table at `path`, opened in
    this process on first use (the listing process has it open already)."""
    with _TABLES_LOCK:
        rows = _TABLES.get((kind, path, audio))
        if rows is not None:
            _TABLES.move_to_end((kind, path, audio))
    if rows is None:
        rows = (parquet_rows if kind == "parquet" else arrow_rows)(path, Columns(audio=audio))
    return rows.open_row(group, index, name)


def parquet_rows(path: str, columns: Columns) -> TableRows:
    import pyarrow.parquet as pq

    handle = open_binary(path)
    parquet = pq.ParquetFile(handle)
    metadata = parquet.metadata
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    return TableRows("parquet", path, parquet.schema_arrow, sizes,
                     lambda group, cols: parquet.read_row_group(group, columns=cols), columns)


def arrow_rows(path: str, columns: Columns) -> TableRows:
    """An Arrow stream file of `save_to_disk` (local), memory-mapped: one group, nothing resident."""
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
    return TableRows("arrow", path, table.schema, [table.num_rows], lambda group, cols: table.select(cols), columns)


def saved_dataset_files(folder: str) -> Optional[list[str]]:
    """The Arrow files of a `save_to_disk` folder in order (from its state.json), None if not one."""
    state = os.path.join(folder, "state.json")
    if not os.path.isfile(state):
        return None
    with open(state, encoding="utf-8") as f:
        files = [item["filename"] for item in json.load(f).get("_data_files", [])]
    return [os.path.join(folder, name) for name in files]


# --- WebDataset ---------------------------------------------------------------------------------

def _split_member(name: str) -> tuple[str, str]:
    """(`__key__`, extension) of a tar member: the key ends at the first dot of the file name."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


def _read_member(shard: str, offset: int, size: int, name: str) -> io.BytesIO:
    with open_binary(shard) as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise AudioDecodeError(name, f"tar member ends {size - len(data)} bytes early")
    return named_stream(data, name)


def webdataset_entries(shard: str, text_field: str = "text") -> Iterator[Entry]:
    """One entry per sample of a WebDataset shard (members grouped by `__key__`, in tar order):
    its first member whose extension is an audio format, and the text of its `.txt` member or
    its `.json` member's `text_field`, when there is one."""
    samples: dict[str, dict] = {}
    with open_binary(shard) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_member(member.name)
            sample = samples.setdefault(key, {})
            last = ext.rsplit(".", 1)[-1]
            if "." + last in MEDIA_SUFFIXES and "audio" not in sample:
                sample["audio"] = (member.offset_data, member.size)
            elif ext in ("txt", text_field + ".txt") and "text" not in sample:
                sample["text"] = tar.extractfile(member).read().decode("utf-8", "replace").strip()
            elif ext == "json" and "text" not in sample:
                try:
                    value = json.loads(tar.extractfile(member).read()).get(text_field)
                except (ValueError, AttributeError):
                    value = None
                if isinstance(value, str):
                    sample["text"] = value
    for key, sample in samples.items():
        name = f"{shard}:{key}"
        if "audio" not in sample:
            yield Entry(name, f"{name}: the sample has no audio member", text=sample.get("text"))
        else:
            offset, size = sample["audio"]
            yield Entry(name, opener=functools.partial(_read_member, shard, offset, size, name),
                        text=sample.get("text"))
