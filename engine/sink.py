"""Where records go: `results.jsonl`, the per-format files of each transcript, and progress.

    with ResultSink("out", formats=("json", "srt")) as sink:      # the CLI's output side,
        for _, record in transcriber.transcribe_iter(paths):       # usable from Python as is
            sink.write(record)

A transcript's files (`<stem>.<format>`, named by `files.OutputNames`: a collision gets `stem~2`,
never another record's file) are written atomically *before* its record, which lists them in `files`
(relative to the output folder), so a record never points at missing files; a failure to write them
turns the record into a run error (redone by `--resume`) and the run goes on. Records are appended
one line at a time, flushed and fsynced, without their tokens (results.py has the file's rules:
repair, resume, merge, lock). A whole run (resume, duplicates, summaries, several processes) is
`run.BulkRun`, which writes through this sink on a thread of its own (`BackgroundWrites`).
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from . import records, storage
from .files import OutputNames, output_stem
from .progress import Progress
from .results import RESULTS, append_record, iter_records, repair
from .writers import check_formats, write_outputs

__all__ = ["BackgroundWrites", "ResultSink", "SubtitleLayout", "output_stem"]


@dataclasses.dataclass(frozen=True)
class SubtitleLayout:
    """How srt/vtt cues are laid out when segments carry words (the reference's options)."""

    highlight_words: bool = False  # underline each word as it is spoken
    max_line_width: Optional[int] = None  # characters per line before a break
    max_line_count: Optional[int] = None  # lines per cue
    max_words_per_line: Optional[int] = None  # words per cue (without max_line_width)

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @property
    def used(self) -> bool:
        return self != SubtitleLayout()


class ResultSink:
    """Writes records to `out_dir/file_name` and each transcript's files beside it."""

    def __init__(self, out_dir: str | os.PathLike, formats: tuple[str, ...] = ("json", "txt"),
                 layout: SubtitleLayout = SubtitleLayout(), *, file_name: str = RESULTS,
                 extra: Optional[dict] = None, progress: Optional[Progress] = None,
                 echo: Optional[Callable[[dict], None]] = None, repair: bool = True,
                 output_layout: str = "tree", roots: Sequence[str] = ()):
        """`extra`: keys added to every record (the run's model and settings); `progress`
        counts records; `echo` is called with each record once it is on disk; `repair`: cut a
        line a kill left torn off the file first (False: the caller did, as `BulkRun` does for
        every results file before it plans); `output_layout` "tree" (the input's folders kept)
        or "flat", `roots` the input folders tree names are relative to (`files.OutputNames`)."""
        self.out, self.formats, self.layout = Path(out_dir), check_formats(tuple(formats)), layout
        self.path = self.out / file_name
        self.extra, self.progress, self.echo = dict(extra or {}), progress, echo
        self.repair = repair
        self.names = OutputNames(self.out, output_layout, roots)
        self.failed = 0  # input and run errors written
        self._handle: Optional[IO[str]] = None

    def __enter__(self) -> "ResultSink":
        self.out.mkdir(parents=True, exist_ok=True)
        if self.repair and repair(self.path):
            logging.warning("%s: removed a record cut short by an earlier kill", self.path)
        # earlier records keep their names: read one at a time, kept as two 8-byte hashes a name
        self.names.claimed = CompactClaims.of_records(iter_records(self.out))
        self._handle = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def write(self, record: Mapping) -> dict:
        """Write a transcript's files, then append its record (a Transcript or a record dict);
        returns the record as written."""
        if self._handle is None:
            raise RuntimeError("ResultSink.write outside its `with` block")
        segments = record.get("segments")  # a Transcript's carry their tokens: its json file shows them
        record = {**records.as_dict(record), **self.extra}
        for key in ("path", "error", "row"):  # URLs' credentials never reach files, names or logs
            if record.get(key):
                record[key] = storage.redact(record[key])
        record["files"] = []
        if record["error"] is None:
            record = self._write_files(record, segments)
        append_record(self._handle, record)
        failed = records.is_failure(record)
        self.failed += failed
        if self.progress is not None:
            self.progress.update(record.get("duration_s"), record["error"] is not None)
        if failed:
            logging.warning("%s", record["error"])
        if self.echo is not None:
            self.echo(record)
        return record

    def _write_files(self, record: dict, segments: Optional[list] = None) -> dict:
        try:
            name = self.names.claim(record["path"], self.formats, record.get("row")) if self.formats else ""
            shown = {key: value for key, value in record.items() if key != "files"}  # json: the transcript
            if segments is not None:
                shown["segments"] = segments
            written = write_outputs(shown, self.out, name, self.formats, **dataclasses.asdict(self.layout))
            record["files"] = [p.relative_to(self.out).as_posix() for p in written]
        except Exception as err:  # noqa: BLE001 - this file's failure, not the run's
            failed = records.failure(record["path"], f"{record['path']}: writing outputs failed: "
                                                     f"{records.one_line(err)}", records.RUN)
            return {**failed.to_record(), **self.extra, "files": []}
        return record


class BackgroundWrites:
    """A `ResultSink` writing on a thread of its own, records in the order they are handed over:
    the run loop goes back to the device instead of waiting on file writes and fsyncs. At most
    `depth` records wait (the loop blocks beyond that); an error writing is raised at the next
    `write` or when the `with` block ends, which waits for every record handed over (a kill
    loses only records not yet appended: `--resume` redoes them, as for any unfinished input)."""

    _DONE = object()

    def __init__(self, sink: ResultSink, depth: int = 256):
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._drain, name="whisper-nnx-writer", daemon=True)

    def __enter__(self) -> "BackgroundWrites":
        self.sink.__enter__()
        self._thread.start()
        return self

    def write(self, record: Mapping) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(record)

    def _drain(self) -> None:
        while (record := self._queue.get()) is not self._DONE:
            if self._error is None:
                try:
                    self.sink.write(record)
                except BaseException as err:  # noqa: BLE001 - raised on the run's thread
                    self._error = err

    @property
    def failed(self) -> int:
        return self.sink.failed

    def __exit__(self, *exc) -> None:
        self._queue.put(self._DONE)
        self._thread.join()
        self.sink.__exit__(*exc)
        if self._error is not None and exc[0] is None:
            raise self._error


def _digest(text: str) -> int:
    """A 64-bit hash of `text` (blake2b), as `CompactClaims` keeps names and their holders."""
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Holder:
    """The holder of a claimed name as `CompactClaims` knows it: equal to the entry identity
    (a string) whose hash it is."""

    __slots__ = ("digest",)

    def __init__(self, digest: int):
        self.digest = digest

    def __eq__(self, other) -> bool:
        if isinstance(other, _Holder):
            return other.digest == self.digest
        return isinstance(other, str) and _digest(other) == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


class CompactClaims:
    """`files.OutputNames.claimed` (output name -> the entry holding it) in a form whose memory is
    16 bytes a name: the names earlier records list, read once from a stream of records into two
    sorted arrays of 64-bit hashes (name, holder), and the names this run claims, a dict of the
    same hashes. `get` answers a `_Holder` (compared with an entry's identity by its hash) or
    None. Two names whose hashes collide (a chance of about 3 in 10^8 at a million names) count as
    one: the later gets the next free name (`stem~2`), never the other's file."""

    def __init__(self, names: np.ndarray, holders: np.ndarray):
        self._names, self._holders = names, holders  # sorted by name; the first holder of a name wins
        self._new: dict[int, int] = {}

    @classmethod
    def of_records(cls, records: Iterable[Mapping]) -> "CompactClaims":
        """The names `records` list (each record's `files`, without their format suffix), held
        by the record's `row`, else its `path`; the first record listing a name holds it."""
        names, holders = array.array("Q"), array.array("Q")
        for record in records:
            stems = dict.fromkeys(os.path.splitext(name)[0] for name in record.get("files") or ())
            if stems:
                holder = _digest(record.get("row") or record["path"])
                for stem in stems:
                    names.append(_digest(stem))
                    holders.append(holder)
        keys = np.frombuffer(names, dtype=np.uint64) if names else np.zeros(0, np.uint64)
        order = np.argsort(keys, kind="stable")
        owners = np.frombuffer(holders, dtype=np.uint64) if holders else np.zeros(0, np.uint64)
        return cls(keys[order], owners[order])

    def get(self, name: str, default=None):
        """The holder of `name` (a `_Holder`), or `default` when no one claimed it."""
        digest = _digest(name)
        holder = self._new.get(digest, self._old_holder(digest))
        return default if holder is None else _Holder(holder)

    def __setitem__(self, name: str, owner: str) -> None:
        self._new[_digest(name)] = _digest(owner)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __len__(self) -> int:
        """How many names are claimed (earlier records' and this run's; a name in both once)."""
        again = sum(1 for digest in self._new if self._old_holder(digest) is not None)
        return len(np.unique(self._names)) + len(self._new) - again

    def _old_holder(self, digest: int) -> Optional[int]:
        """The holder's hash of an earlier record's name of hash `digest`, or None."""
        at = int(np.searchsorted(self._names, np.uint64(digest)))
        if at < len(self._names) and int(self._names[at]) == digest:
            return int(self._holders[at])
        return None
