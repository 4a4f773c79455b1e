"""Rows of speech datasets as input entries: Parquet files (the layout `datasets` writes with
`to_parquet`, and the Hub's Parquet files), folders saved by `Dataset.save_to_disk` (Arrow
stream files), and WebDataset `.tar` shards.

    data.parquet -> TABLES.open -> TableRows (row groups, read lazily) -> Entry per row, its
                    opener reading that row's audio bytes (from the table TABLES holds open)
                    when the decoder's turn comes

Listing reads only the small columns (the id and the reference text); a row's audio is read
with its row group when the decoder first asks for a row of it, and the row groups held for the
rows after it (all open tables together) are bounded in bytes, within the reading side's
--max-audio-in-memory (reading.AudioPrefetcher counts them): a corpus larger than memory
streams through. The audio
column holds `{bytes, path}` structs (the `datasets` Audio feature) or plain binary: it is the
column the schema's `huggingface` metadata declares as Audio, else the first struct column with
a `bytes` field, else a binary column named `audio`; `--audio-column` names it outright. A row
with null bytes is read from its `path` (relative to the dataset's folder; an absolute path, a
path through `..` or a URL only with `SourceOptions.follow_row_paths`, the CLI's
--follow-row-paths: else the row's record is an error naming the option).

Record names (`path` in results.jsonl): `FILE:ROW` (0-based over the whole file), or the row's
`--id-column` value (a name, not an identity: rows may share one; the record then carries its
row as `row`, the key `--resume` matches); `SHARD:KEY` for a WebDataset sample (`__key__`: the
member name up to the first dot of its file name).
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
from .entry import MEDIA_SUFFIXES, Entry, open_url_or_path
from .storage import is_url, join, open_binary, parent

OPEN_TABLES = 16  # tables kept open per process (file handles)
CACHED_AUDIO_BYTES = 256 << 20  # row groups of audio held for later rows, all tables together (GroupCache)


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """How dataset inputs are read (the CLI's --audio-column, --id-column, --text-column): which
    columns hold the audio (None: detected), the record id (None: FILE:ROW names) and the
    reference text (a missing column: no references; also a manifest's field and a WebDataset
    sample's `.json` field), and whether a row's audio `path` may lead outside the dataset's
    folder (an absolute path, `..`, a URL: any file or host the dataset's author names)."""

    audio_column: Optional[str] = None
    id_column: Optional[str] = None
    text_column: str = "text"
    follow_row_paths: bool = False  # --follow-row-paths: rows may name absolute paths, `..` and URLs


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
                 read_group: Callable[[int, list[str]], object], options: SourceOptions,
                 groups: Optional["GroupCache"] = None):
        """`groups`: where its groups of audio are held for later rows (None: a cache of its own;
        `OpenTables.open` gives every table the process's one); none for a memory-mapped table."""
        self.kind, self.name, self.schema, self.options = kind, name, schema, options
        self.group_sizes, self.read_group = group_sizes, read_group
        self.audio = audio_column(schema, options.audio_column, name)
        self.groups = groups if groups is not None else GroupCache()

    def entries(self) -> Iterator[Entry]:
        id_column, text_column = self.options.id_column, self.options.text_column
        if id_column is not None and id_column not in self.schema.names:
            raise ValueError(f"{self.name}: no id column {id_column!r} (columns: {', '.join(self.schema.names)})")
        small = [c for c in (id_column, text_column) if c is not None and c in self.schema.names]
        row = 0
        for group, size in enumerate(self.group_sizes):
            table = self.read_group(group, small) if small else None
            ids = table.column(id_column).to_pylist() if id_column else None
            texts = table.column(text_column).to_pylist() if text_column in small else None
            for i in range(size):
                name = f"{self.name}:{row}" if ids is None else str(ids[i])
                text = None if texts is None or texts[i] is None else str(texts[i])
                if ids is not None and ids[i] is None:
                    yield Entry(f"{self.name}:{row}", f"{self.name}:{row}: the id column {id_column!r} is null",
                                text=text)
                else:
                    # a module function of plain values: the entry pickles (Ray ships entries to its actors)
                    opener = functools.partial(open_table_row, self.kind, self.name, self.audio, group, i, name,
                                               self.options.follow_row_paths)
                    yield Entry(name, opener=opener, text=text, row=None if ids is None else f"{self.name}:{row}")
                row += 1

    def _audio_of(self, group: int):
        read = lambda: self.read_group(group, [self.audio]).column(self.audio)  # noqa: E731
        if self.kind == "arrow":  # memory-mapped: selecting is free and holds nothing resident
            return read()
        return self.groups.get((self.kind, self.name, self.audio, group), read)

    def open_row(self, group: int, index: int, name: str, follow: bool = False):
        """Row `index` of group `group`'s audio: a binary stream of its bytes, or its path (one
        outside the dataset's folder only when `follow`: SourceOptions.follow_row_paths)."""
        value = self._audio_of(group)[index].as_py()
        if isinstance(value, (bytes, bytearray)):
            return named_stream(bytes(value), name)
        if isinstance(value, dict):
            if value.get("bytes"):
                return named_stream(value["bytes"], name)
            if value.get("path"):
                return row_path(self.name, value["path"], name, follow)
        raise AudioDecodeError(name, f"the row has no audio (column {self.audio!r} is empty)")


class GroupCache:
    """Row groups of audio (pyarrow columns) read for a row and held for the rows after it,
    across tables: the least recently used let go once they hold more than `limit_bytes` (the
    group just read always stays, so a group larger than the limit is read once, not per row).
    Thread-safe; a group is read outside the lock that guards what is held, once: a thread
    wanting a group another is reading waits for that read."""

    def __init__(self, limit_bytes: int = CACHED_AUDIO_BYTES):
        self.limit_bytes = limit_bytes
        self._groups: collections.OrderedDict = collections.OrderedDict()  # key -> (column, bytes)
        self._bytes = 0
        self._lock = threading.Lock()
        self._reading: dict[tuple, threading.Lock] = {}  # key -> held while the group is read

    def _held(self, key: tuple):
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key][0]
            return None

    def get(self, key: tuple, read: Callable[[], object]):
        """The column held under `key`, else `read()` held under it."""
        if (column := self._held(key)) is not None:
            return column
        with self._lock:
            reading = self._reading.setdefault(key, threading.Lock())
        with reading:
            if (column := self._held(key)) is not None:  # read by the thread this one waited for
                return column
            try:
                column = read()
                with self._lock:
                    if key not in self._groups:  # (a thread that waited for a read since let go may read too)
                        self._groups[key] = (column, column.nbytes)
                        self._bytes += column.nbytes
                    self._groups.move_to_end(key)
                    while self._bytes > self.limit_bytes and len(self._groups) > 1:
                        self._bytes -= self._groups.popitem(last=False)[1][1]
            finally:
                with self._lock:
                    self._reading.pop(key, None)
        return column

    def held_bytes(self) -> int:
        """Bytes of the groups held now."""
        with self._lock:
            return self._bytes

    def bound(self, limit_bytes: int) -> None:
        """Hold at most `limit_bytes` from now on (groups over it let go now)."""
        with self._lock:
            self.limit_bytes = limit_bytes
            while self._bytes > limit_bytes and self._groups:
                self._bytes -= self._groups.popitem(last=False)[1][1]


class OpenTables:
    """The tables a process keeps open (file handles): at most `limit`, the least recently used
    let go first, and their row groups of audio held in one `GroupCache` (`cache_bytes`). A
    listing opens its table here and its rows' openers find it here; in another process (a Ray
    actor) the first opener opens it again."""

    def __init__(self, limit: int = OPEN_TABLES, cache_bytes: int = CACHED_AUDIO_BYTES):
        self.limit = limit
        self.groups = GroupCache(cache_bytes)
        self._tables: collections.OrderedDict = collections.OrderedDict()  # (kind, path, audio column) -> rows
        self._lock = threading.Lock()

    def open(self, kind: str, path: str, options: SourceOptions) -> TableRows:
        """The table at `path` ("parquet": a Parquet file; "arrow": a save_to_disk stream file),
        opened now and kept."""
        rows = (parquet_rows if kind == "parquet" else arrow_rows)(path, options)
        rows.groups = self.groups
        with self._lock:
            self._tables[(kind, path, rows.audio)] = rows
            while len(self._tables) > self.limit:
                self._tables.popitem(last=False)
        return rows

    def open_row(self, kind: str, path: str, audio: str, group: int, index: int, name: str, follow: bool = False):
        """Row `index` of row group `group` of the table's audio column `audio` (TableRows.open_row)."""
        with self._lock:
            rows = self._tables.get((kind, path, audio))
            if rows is not None:
                self._tables.move_to_end((kind, path, audio))
        if rows is None:
            rows = self.open(kind, path, SourceOptions(audio_column=audio))
        return rows.open_row(group, index, name, follow)


TABLES = OpenTables()  # this process's: an opener is a module function of plain values, so it finds its table here


def open_table_row(kind: str, path: str, audio: str, group: int, index: int, name: str, follow: bool = False):
    """A row entry's opener: its audio, from the table `TABLES` holds open (or opens)."""
    return TABLES.open_row(kind, path, audio, group, index, name, follow)


def row_path(table: str, path: str, name: str, follow: bool):
    """The file a row's audio `path` names (a URL opened): relative to the dataset's folder; an absolute path,
    a URL or a path through `..` only when `follow` (else AudioDecodeError naming the option)."""
    outside = is_url(path) or os.path.isabs(path) or ".." in path.replace("\\", "/").split("/")
    if outside and not follow:
        raise AudioDecodeError(name, f"the row's audio path {path!r} leads outside the dataset's folder "
                                     "(an absolute path, '..' or a URL): pass --follow-row-paths to read it")
    return open_url_or_path(path if is_url(path) or os.path.isabs(path) else join(parent(table), path))


def parquet_rows(path: str, options: SourceOptions) -> TableRows:
    """A Parquet file's rows, read a row group at a time (`TABLES.open` keeps it open for its
    entries' openers)."""
    import pyarrow.parquet as pq

    handle = open_binary(path)
    parquet = pq.ParquetFile(handle)
    metadata = parquet.metadata
    sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    # One read at a time: a ParquetFile read from several threads at once (the listing's and the
    # decoding threads') corrupts memory and crashes the process.
    reading = threading.Lock()

    def read_group(group: int, columns: list[str]):
        with reading:
            return parquet.read_row_group(group, columns=columns)

    return TableRows("parquet", path, parquet.schema_arrow, sizes, read_group, options)


def arrow_rows(path: str, options: SourceOptions) -> TableRows:
    """An Arrow stream file of `save_to_disk` (local), memory-mapped: one group, nothing resident."""
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
    return TableRows("arrow", path, table.schema, [table.num_rows], lambda group, cols: table.select(cols), options)


def saved_dataset_files(folder: str) -> Optional[list[str]]:
    """The Arrow files of a `save_to_disk` folder in order (from its state.json), None if not one."""
    state = os.path.join(folder, "state.json")
    if not os.path.isfile(state):
        return None
    with open(state, encoding="utf-8") as f:
        items = json.load(f)
    items = items.get("_data_files", []) if isinstance(items, dict) else None
    if not isinstance(items, list) or not all(isinstance(x, dict) and isinstance(x.get("filename"), str)
                                              for x in items):
        raise ValueError(f'{state}: not a save_to_disk state ("_data_files" must list {{"filename": ...}})')
    return [os.path.join(folder, item["filename"]) for item in items]


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
