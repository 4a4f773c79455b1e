"""`results.jsonl`: one JSON record per input entry, safe against a kill at any moment.

- A record is appended as one line, flushed and fsynced before the next input is reported;
  its per-format files are written (atomically) before it, so a record never points at files
  that are not there.
- A kill can cut the last line short. `repair` drops such a torn tail (every line of the
  file then parses) before anything else is appended; its input has no record and is redone.
- `--resume` counts the records per path: the k-th listing of a path is done when that path
  has at least k records (a path listed twice gets a second record saying so).
- Under several processes each writes `results.process-NNNNN.jsonl`; process 0 merges them
  into `results.jsonl` at the end (a resumed run reads both kinds).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import IO, Iterable

from .writers import atomic_write_text

RESULTS = "results.jsonl"


def process_files(out: Path) -> list[Path]:
    return sorted(out.glob("results.process-*.jsonl"))


def repair(path: Path) -> int:
    """Cut a torn last line (no trailing newline, or not JSON) off `path`; returns bytes cut."""
    if not path.exists() or not path.stat().st_size:
        return 0
    data = path.read_bytes()
    keep = len(data)
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:
        last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[last_start:])
        except ValueError:
            keep = last_start
    if keep < len(data):
        with open(path, "rb+") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - keep


def read_records(path: Path) -> Iterable[dict]:
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # only a torn line can fail, and repair removes those
        if isinstance(record, dict) and "path" in record:
            yield record


def recorded_counts(out: Path) -> collections.Counter:
    """Records per input path in `out` (merged and per-process results)."""
    counts: collections.Counter = collections.Counter()
    for path in [out / RESULTS, *process_files(out)]:
        counts.update(r["path"] for r in read_records(path))
    return counts


def pending_entries(entries: list[str], done: collections.Counter) -> tuple[list[str], list[tuple[str, int]]]:
    """Entries still to do: (paths to transcribe, (duplicate path, index of its first listing)).

    The k-th listing of a path counts as done when `done` has k records for it. A path listed
    again (the same file, however written) is not transcribed twice: its later listings get a
    record of their own saying which entry they repeat.
    """
    seen: collections.Counter = collections.Counter()
    first: dict[str, int] = {}
    todo, duplicates = [], []
    for index, entry in enumerate(entries):
        seen[entry] += 1
        same_file = os.path.abspath(entry)
        is_duplicate = same_file in first
        first.setdefault(same_file, index)
        if seen[entry] <= done[entry]:
            continue
        if is_duplicate:
            duplicates.append((entry, first[same_file]))
        else:
            todo.append(entry)
    return todo, duplicates


def append_record(handle: IO[str], record: dict) -> None:
    """One line, on disk before this returns."""
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def merge_process_results(out: Path) -> None:
    """Append every per-process file's records, in process order, to results.jsonl
    atomically, then remove the per-process files."""
    merged = out / RESULTS
    repair(merged)
    parts = [merged.read_text(encoding="utf-8")] if merged.exists() else []
    files = process_files(out)
    for part in files:
        repair(part)
        parts.append(part.read_text(encoding="utf-8"))
    atomic_write_text(merged, "".join(parts))
    for part in files:
        part.unlink()
