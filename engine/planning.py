"""A run's entries as they are listed: listed on a thread of their own, planned one at a time and
handed to the producer as the reading side reaches them, so a run's first decode waits for its
first inputs to be listed, not for the last WebDataset shard's headers or Parquet file's ids.

    inputs -> Listing (a thread: expand_inputs; `entries` grows as it lists)
           -> results.plan_steps, one entry at a time (old records read before the first write)
           -> PlanStream.todo(): entries to transcribe, to the producer as it asks for them;
              on the way, records that need no transcription (a manifest line naming no file,
              a repeat of a file already done) are written
           -> PlanStream.record(): each produced record written, the repeats of its file after it

A run of several processes lists everything before it plans (each process takes a contiguous
block of the entries to do, which needs their count); so does Ray's driver, which hands Ray Data
the whole list.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

from . import records
from .datasets import SourceOptions
from .entry import Entry, entry_key
from .inputs import expand_inputs
from .progress import Progress
from .results import READY, SKIP, TODO


class Listing:
    """`expand_inputs(inputs, sources)` on a thread: `entries` holds what is listed so far, in
    order; iterating gives the entries as they are listed (waiting for each); `all` waits for
    the end. An error of the listing itself (not an unreadable input: that is an entry) is
    raised to whoever waits for it."""

    def __init__(self, inputs: Sequence[str], sources: SourceOptions = SourceOptions()):
        self.entries: list[Entry] = []
        self._changed = threading.Condition()
        self._ended = self._stopped = False
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._list, args=(list(inputs), sources), daemon=True,
                                        name="whisper-nnx-listing")
        self._thread.start()

    def _list(self, inputs: list[str], sources: SourceOptions) -> None:
        try:
            for entry in expand_inputs(inputs, sources):
                if self._stopped:
                    return
                with self._changed:
                    self.entries.append(entry)
                    self._changed.notify_all()
        except BaseException as err:  # noqa: BLE001 - raised where the entries are waited for
            self._error = err
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _reached(self, count: Optional[int]) -> bool:
        """Wait until `count` entries are listed (None: the end); whether there are that many."""
        with self._changed:
            while not self._ended and (count is None or len(self.entries) < count):
                self._changed.wait()
            if count is not None and len(self.entries) >= count:
                return True
            if self._error is not None:  # after the entries listed before it
                raise self._error
            return count is None

    def __iter__(self) -> Iterator[Entry]:
        index = 0
        while self._reached(index + 1):
            yield self.entries[index]
            index += 1

    def empty(self) -> bool:
        """Whether the inputs list no entry at all (waits for the first)."""
        return not self._reached(1)

    def all(self) -> list[Entry]:
        """Every entry (waits for the listing to end)."""
        self._reached(None)
        return self.entries

    def stop(self) -> None:
        """The run ended early: list no further."""
        self._stopped = True


class PlanStream:
    """`results.plan_steps` taken as the producer asks for entries (`todo`): entries to
    transcribe are yielded, named as the producer takes them (`Entry.for_producer`); a listed
    entry that names no file gets its error record at once; a repeat of a file (a duplicate
    record) is written at once when its file's record is (an earlier run's, or this run's),
    else right after it (`record`). `progress` is told of each record to come as it is planned.

    Several processes: `owns(i)` says whether the i-th entry to transcribe is this process's,
    which then writes the repeats of its files; `lead` (process 0) writes the repeats of files
    an earlier run did.

    `todo` may run on another thread than `record` (the reading side pulls its inputs on a
    thread of its own): what they share is under a lock, so a repeat is written after the
    record it repeats whichever comes first."""

    def __init__(self, steps: Iterable[tuple[str, int, Entry, int]], write: Callable[[Mapping], None],
                 progress: Progress, owns: Optional[Callable[[int], bool]] = None, lead: bool = True):
        self.steps, self.write, self.progress, self.owns, self.lead = steps, write, progress, owns, lead
        self.skipped = 0  # entries with their record from an earlier run
        self._files: dict[str, bool] = {}  # key -> its record is written, for this process's files
        self._repeats: dict[str, list[tuple[Entry, int]]] = {}  # key -> (repeat, first listing) waiting
        self._rows: dict[str, Entry] = {}  # dataset row -> entry, for entries under way named by an id
        self._lock = threading.Lock()
        self.finished = False  # every step taken

    def todo(self) -> Iterator[Entry]:
        """The entries to transcribe, as the steps reach them."""
        count = 0
        for step, _, entry, first in self.steps:
            if step == SKIP:
                self.skipped += 1
            elif step == TODO:
                count += 1
                if self.owns is not None and not self.owns(count - 1):
                    continue
                self.progress.expect(1)
                with self._lock:
                    self._files[entry.key] = False
                    if entry.error is not None:  # a manifest line that names no file
                        self._written(records.failure(entry.name, entry.error, records.INPUT))
                        continue
                    if entry.row is not None:
                        self._rows[entry.row] = entry
                yield entry.for_producer()
            elif step == READY:  # its file's record is an earlier run's
                if self.lead:
                    self.progress.expect(1)
                    self.write(duplicate(entry, first))
            else:
                with self._lock:
                    if entry.key not in self._files:  # a repeat of another process's file
                        continue
                    self.progress.expect(1)
                    if self._files[entry.key]:
                        self.write(duplicate(entry, first))
                    else:
                        self._repeats.setdefault(entry.key, []).append((entry, first))
        self.progress.listed()
        self.finished = True

    def record(self, record: records.Transcript) -> None:
        """A produced record: written under its entry's name, the repeats of its file after it."""
        with self._lock:
            entry = self._rows.pop(record["path"], None)
            if entry is not None:  # named by its dataset row for the producer: its name again, with its row
                record = (dataclasses.replace(record, path=entry.name, extra={**record.extra, "row": entry.row})
                          if isinstance(record, records.Transcript) else {**record, "path": entry.name, "row": entry.row})
            self._written(record)

    def _written(self, record: Mapping) -> None:
        """(Under the lock.)"""
        self.write(record)
        key = entry_key(record.get("row") or record["path"])
        self._files[key] = True
        for repeat, first in self._repeats.pop(key, ()):
            self.write(duplicate(repeat, first))


def duplicate(entry: Entry, first: int) -> records.Transcript:
    """The duplicate record of `entry` (listed again: the same audio as entry `first`)."""
    return records.duplicate(entry.name, first, **({} if entry.row is None else {"row": entry.row}))

