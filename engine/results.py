"""`results.jsonl`: one JSON record per input entry, safe against a kill at any moment.

- A line is `record_line(record)` (JSON of `records.as_dict`: no tokens) and is read back by
  `parse_record`; the bucket mirror (remote_output.py) and Ray's rows use the same two.
- A record is appended as one line, flushed and fsynced before the next input is reported;
  its per-format files are written (atomically, fsynced) before it, so a record never points
  at files that are not there.
- A kill can cut the last line short. `repair` drops such a torn tail (every line of the
  file then parses) before anything else is appended; its input has no record and is redone.
- Every record says what it is: a transcript (`error` null), an input error (`error_kind`
  "input": the file itself is bad, final), a run error ("run": out of memory, a device or
  host failure; retried by `--resume`), or a duplicate listing ("duplicate", `duplicate_of`
  the 1-based entry it repeats; written after the record of that entry).
- `--resume` (`plan_run`) counts transcripts and duplicate records apart, by file: a path is
  done once it has a transcript or an input error; its k-th repeat once it has k duplicate
  records. Records to retry are removed first (`drop_retried`), so every entry still ends
  with exactly one record.
- Under several processes each writes `results.process-NNNNN.jsonl`; process 0 merges them
  into `results.jsonl` at the end (`merge_process_results`), with a marker that makes a merge
  cut short by a crash finish on the next start without duplicating a record. A run that
  finds process files from an earlier multi-process run merges them first.
- `RunLock` refuses a second run in the same output directory while one is running (a lock
  file, NFS included); under it, the run's start removes temp files a kill left behind.
- Lines are split at "\\n" only (`lines_of`), and a record line never holds U+2028, U+2029 or
  U+0085 raw (`record_json` escapes them): `str.splitlines` would split a record in two.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import IO, Iterable, Iterator, Mapping, Optional, Sequence

from .entry import Entry, entry_key, record_key
from .files import atomic_write_text, fsync_directory
from .records import DUPLICATE, INPUT, RUN, as_dict, error_kind

RESULTS = "results.jsonl"
LOCK_FILE = ".whisper-nnx.lock"  # RunLock's lock file
MERGE_MARK = ".results-merge.json"  # a merge in progress: sizes before and after, and its parts


def process_file(index: int) -> str:
    """The name of process `index`'s own results file in a multi-process run."""
    return f"results.process-{index:05d}.jsonl"


def process_files(out: Path) -> list[Path]:
    return sorted(out.glob("results.process-*.jsonl"))


def record_json(record: Mapping) -> str:
    """A record (a Transcript or a record read back) as JSON, without tokens: the one serializer
    of records (results files, the bucket's parts, Ray's rows, the Parquet table's `record`)."""
    text = json.dumps(as_dict(record), ensure_ascii=False)
    for char, escaped in _LINE_BREAKS:  # str.splitlines breaks lines there: never written raw
        text = text.replace(char, escaped)
    return text


# Characters that JSON leaves raw but str.splitlines (and some readers) break lines at
_LINE_BREAKS = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\x85", "\\u0085"))


def lines_of(text: str) -> list[str]:
    """A results file's lines, each with its newline (a last line cut short without): split at
    newlines only, never at the separators `str.splitlines` also splits at (U+2028, U+2029,
    U+0085, written raw in older records' text)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def record_line(record: Mapping) -> str:
    """A record as its line of a results file (with the newline)."""
    return record_json(record) + "\n"


def parse_record(line: str | bytes) -> Optional[dict]:
    """The record on a results-file line, or None for anything else (a line cut short, a
    foreign line)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "path" in record else None


def repair(path: Path) -> int:
    """Cut a torn last line (no trailing newline, or not JSON) off `path`; returns bytes cut."""
    if not path.exists() or not path.stat().st_size:
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        start, line = _last_line(f, size)  # only the tail is read: memory does not grow with the file
        keep = size
        if not line.endswith(b"\n"):
            keep = start
        else:
            try:
                json.loads(line)
            except ValueError:
                keep = start
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return size - keep


def _last_line(handle: IO[bytes], size: int, block: int = 1 << 20) -> tuple[int, bytes]:
    """(where the last line of a file of `size` bytes starts, that line with its newline if it
    has one), read backwards block by block from the end."""
    handle.seek(size - 1)
    last = handle.read(1)
    pos, tail = size - 1, b""  # the last byte is never the newline that ends the line before
    while pos > 0:
        step = min(block, pos)
        pos -= step
        handle.seek(pos)
        chunk = handle.read(step)
        tail = chunk + tail
        at = chunk.rfind(b"\n")
        if at >= 0:
            return pos + at + 1, tail[at + 1:] + last
    return 0, tail + last


def read_records(path: Path) -> Iterator[dict]:
    """The records of a results file, one line at a time (split at b"\\n" only: memory does not
    grow with the file)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for line in handle:
            record = parse_record(line)  # only a torn line can fail, and repair removes those
            if record is not None:
                yield record


def iter_records(out: Path) -> Iterator[dict]:
    """Every record in `out`, one at a time: results.jsonl, then the per-process files."""
    for path in [out / RESULTS, *process_files(out)]:
        yield from read_records(path)


class RecordsOf:
    """Every record in `out` as an iterable that reads them again, one line at a time, on each
    pass (`iter_records`): what the run's end hands to the table and the finish hook."""

    def __init__(self, out: Path):
        self.out = out

    def __iter__(self) -> Iterator[dict]:
        return iter_records(self.out)

    def __len__(self) -> int:
        """How many records (a pass over the files)."""
        return sum(1 for _ in self)


def all_records(out: Path) -> list[dict]:
    """Every record in `out`: results.jsonl, then the per-process files."""
    return list(iter_records(out))


def is_retried(record: dict, retry_errors: bool) -> bool:
    """Whether `--resume` redoes this record's entry: run errors always, input errors with
    `--retry-errors`; transcripts and duplicate records never."""
    kind = error_kind(record)
    return kind == RUN or (retry_errors and kind == INPUT)


def drop_retried(out: Path, retry_errors: bool) -> int:
    """Remove the records `--resume` will redo from every results file (atomically, one file
    at a time: a kill in between leaves each file whole); returns how many were removed."""
    removed = 0
    for path in [out / RESULTS, *process_files(out)]:
        if path.exists():
            removed += _drop_lines(path, retry_errors)
    return removed


def _drop_lines(path: Path, retry_errors: bool) -> int:
    """`drop_retried` on one file, a line at a time (memory does not grow with the file): the
    kept lines go to a temp file beside it (`.NAME.<8 hex>.tmp`, as `atomic_write_text` names
    them), which is fsynced and renamed over it when some line was dropped, else removed."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    removed = 0
    try:
        with open(path, "rb") as source, open(tmp, "xb") as kept:
            for line in source:
                if _retried_line(line, retry_errors):
                    removed += 1
                else:
                    kept.write(line)
            if removed:
                kept.flush()
                os.fsync(kept.fileno())
        if removed:
            os.replace(tmp, path)
            fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return removed


def _retried_line(line: str | bytes, retry_errors: bool) -> bool:
    record = parse_record(line)
    return record is not None and is_retried(record, retry_errors)


@dataclasses.dataclass
class RunPlan:
    """What a run (or a resumed run) still has to write, from its entries and old records."""

    todo: list[Entry]  # entries to transcribe: the first listing of each file without a record
    # file key -> its repeats still without a record: (entry name, entry index, index of the
    # first listing); written right after the first listing's record
    repeats: dict[str, list[tuple[str, int, int]]]
    ready: list[tuple[str, int, int]]  # repeats whose first listing already has its record
    skipped: int  # entries that already have their record

    def repeats_of(self, name: str, row: Optional[str] = None) -> list[tuple[str, int, int]]:
        """The repeats to record after the record of entry `name` (its dataset `row`, when it
        has one: `Entry.row`), each handed out once."""
        return self.repeats.pop(entry_key(row or name), [])


def plan_run(entries: Sequence[Entry], records: Iterable[dict]) -> RunPlan:
    """Entries still to do, given the records already written.

    A file listed again (however written: entries with one `key`) is transcribed once, at its
    first listing; each later listing gets a duplicate record. Transcripts and duplicate
    records are counted apart, so a kill between the two kinds never counts a file as done.
    """
    plan = RunPlan([], {}, [], 0)
    for step, index, entry, first in plan_steps(entries, *done_keys(records)):
        if step == SKIP:
            plan.skipped += 1
        elif step == TODO:
            plan.todo.append(entry)
        elif step == READY:
            plan.ready.append((entry.name, index, first))
        else:
            plan.repeats.setdefault(entry.key, []).append((entry.name, index, first))
    return plan


# What `plan_steps` says of each entry: it has its record; it is transcribed (the first listing
# of its file); a repeat whose first listing has its record; a repeat of a listing to transcribe
SKIP, TODO, READY, REPEAT = "skip", "todo", "ready", "repeat"


def done_keys(records: Iterable[dict]) -> tuple[set, collections.Counter]:
    """From old records: the keys of files done (a transcript or an error), and how many
    duplicate records each key has."""
    finished: set[str] = set()
    repeats_done: collections.Counter = collections.Counter()
    for record in records:
        key = record_key(record)
        if error_kind(record) == DUPLICATE:
            repeats_done[key] += 1
        else:
            finished.add(key)
    return finished, repeats_done


def plan_steps(entries: Iterable[Entry], finished: set,
               repeats_done: collections.Counter) -> Iterator[tuple[str, int, Entry, int]]:
    """`plan_run` one entry at a time (entries may stream): (SKIP, TODO, READY or REPEAT, the
    entry's index, the entry, the index of its file's first listing)."""
    first: dict[str, int] = {}
    repeats_seen: collections.Counter = collections.Counter()
    for index, entry in enumerate(entries):
        key = entry.key
        if key not in first:
            first[key] = index
            yield (SKIP if key in finished else TODO), index, entry, index
            continue
        repeats_seen[key] += 1
        if repeats_seen[key] <= repeats_done[key]:
            yield SKIP, index, entry, first[key]
        else:
            yield (READY if key in finished else REPEAT), index, entry, first[key]


def missing_entries(entries: Sequence[Entry], records: Iterable[dict]) -> list[str]:
    """The names of the entries without their record (a file listed n times has n records: its
    transcript or error, and n - 1 duplicate records), in listing order: none after a whole run."""
    have = collections.Counter(record_key(record) for record in records)
    missing = []
    for entry in entries:
        key = entry.key
        if have[key] > 0:
            have[key] -= 1
        else:
            missing.append(entry.name)
    return missing


def repeated_names(entries: Sequence[Entry]) -> list[str]:
    """Names an entry shares with an earlier entry that is not the same audio (rows whose
    --id-column values repeat): each is transcribed, and their records share the name."""
    keys: dict[str, str] = {}
    repeated = []
    for entry in entries:
        if keys.setdefault(entry.name, entry.key) != entry.key:
            repeated.append(entry.name)
    return repeated


def append_record(handle: IO[str], record: Mapping) -> None:
    """One line, on disk before this returns."""
    handle.write(record_line(record))
    handle.flush()
    os.fsync(handle.fileno())


def merge_process_results(out: Path) -> None:
    """Append every per-process file's records, in process order, to results.jsonl, then
    remove the per-process files. The files are copied a block at a time (memory does not grow
    with them). A marker written first records the sizes before and after: a merge cut short
    is finished (or undone) by `finish_merge` and never applied twice."""
    finish_merge(out)
    files = process_files(out)
    if not files:
        return
    merged = out / RESULTS
    repair(merged)
    for part in files:
        repair(part)
    before = merged.stat().st_size if merged.exists() else 0
    after = before + sum(part.stat().st_size for part in files)
    atomic_write_text(out / MERGE_MARK, json.dumps({"before": before, "after": after,
                                                    "parts": [p.name for p in files]}))
    _append_files(merged, files)
    _finish(out, [p.name for p in files])


def _append_files(target: Path, sources: Sequence[Path], block: int = 1 << 20) -> None:
    """`sources`' bytes appended to `target` (made when missing), fsynced."""
    with open(target, "ab") as handle:
        for source in sources:
            with open(source, "rb") as part:
                shutil.copyfileobj(part, handle, block)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(target.parent)


def finish_merge(out: Path) -> None:
    """After a crash during a merge: when results.jsonl already holds the merged records, the
    per-process files it came from are removed; otherwise what was appended of them is cut off
    again (results.jsonl back to its size before the merge) and they stay, merged again."""
    mark = out / MERGE_MARK
    if not mark.exists():
        return
    info = json.loads(mark.read_text(encoding="utf-8"))
    merged = out / RESULTS
    size = merged.stat().st_size if merged.exists() else 0
    if size == info["after"]:
        _finish(out, info["parts"])
        return
    if info["before"] < size:  # an append cut short: undone
        with open(merged, "rb+") as handle:
            handle.truncate(info["before"])
            handle.flush()
            os.fsync(handle.fileno())
    _finish(out, [])


def _finish(out: Path, parts: list[str]) -> None:
    for name in parts:
        (out / name).unlink(missing_ok=True)
    fsync_directory(out)
    (out / MERGE_MARK).unlink(missing_ok=True)
    fsync_directory(out)


class RunLocked(RuntimeError):
    """Another run holds the output directory."""


class RunLock:
    """An exclusive lock on an output directory for the length of a run: `flock` on the lock file
    `LOCK_FILE` in it, opened for reading and writing (Linux NFS emulates flock with a byte-range
    lock, which needs a file open for writing; on a local disk flock refuses a second open file
    even in the same process). The kernel (or the NFS server's lock manager) releases it when the
    process dies, so a killed run never leaves a stale lock; the file itself stays."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            raise RunLocked(f"{self.out} is in use by another whisper-nnx run; wait for it to finish, "
                            "or choose another --output-dir") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# files.atomic_write_text's temp files (`.NAME.<8 hex>.tmp`) and results_table's
# (`results.parquet.tmp`): left behind only by a killed writer
_TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{8}\.tmp|results\.parquet\.tmp")


def remove_temp_files(out: Path) -> int:
    """Remove the temp files of writes a kill cut short, anywhere under `out` (process 0, under
    the run's lock: no writer of this folder is running); returns how many were removed."""
    removed = 0
    for folder, _, names in os.walk(out):
        for name in names:
            if _TEMP_FILE.fullmatch(name):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed
