"""`whisper-nnx transcribe|eval ... --dry-run`: what a run would do, without doing it.

It lists the inputs as a run does (`inputs.expand_inputs`, one entry at a time), reads the
records already in the output folder (one line at a time, repairing nothing), and prints: the
entries found, those that name no readable input (error entries: their records would be input
errors) with the first few reasons, local files that do not exist, the hours of audio where
file headers tell it (the first `probe` local files only: a million-entry corpus does not open a
million files; the rest is estimated from their mean), and what `--resume` would redo (the
plan of `results.plan_run`, counted as it streams). It loads no model, imports no JAX, and
writes nothing: the output folder is neither created nor locked. Its exit status is 0.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

from . import records, storage
from . import results as results_io
from .entry import Entry
from .inputs import SourceOptions, expand_inputs

PROBE = 200  # local files whose headers a dry run reads for their duration (--dry-run-probe)
SHOWN = 5  # entries named per kind of problem


@dataclasses.dataclass
class OldRecords:
    """What the output folder already holds (nothing changed)."""

    kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # None: transcripts
    finished: set = dataclasses.field(default_factory=set)  # keys done, after the retried ones are dropped
    repeats_done: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    retried: int = 0  # records a resume drops and redoes

    @property
    def total(self) -> int:
        return sum(self.kinds.values())


def read_old(out: Optional[Path], retry_errors: bool) -> OldRecords:
    """The records in `out` (None: a URL, not read), as a resume sees them once `drop_retried`
    removed the records it redoes."""
    old = OldRecords()
    if out is None or not out.is_dir():
        return old

    def kept():  # counted as they stream by: no record is held
        for record in results_io.iter_records(out):
            old.kinds[records.error_kind(record)] += 1
            if results_io.is_retried(record, retry_errors):
                old.retried += 1
            else:
                yield record

    old.finished, old.repeats_done = results_io.done_keys(kept())
    return old


@dataclasses.dataclass
class Listing:
    """The counts of a dry run's pass over the entries."""

    entries: int = 0
    errors: list = dataclasses.field(default_factory=list)  # (name, reason), the first SHOWN
    error_count: int = 0
    missing: list = dataclasses.field(default_factory=list)  # local files not there, the first SHOWN
    missing_count: int = 0
    local_files: int = 0  # plain local files (stat'ed)
    other: int = 0  # URLs, dataset rows, tar members, spans: no header read
    references: int = 0  # entries with a reference text (eval)
    probed: int = 0  # headers read
    unopened: list = dataclasses.field(default_factory=list)  # probed files that would not open
    seconds: float = 0.0  # audio in the probed files
    span_seconds: float = 0.0  # audio in manifest spans of known length
    steps: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def duration_s(path: str) -> Optional[float]:
    """A local media file's duration from its container header (PyAV; None when it cannot be
    opened or does not say)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if container.duration is not None:
                return container.duration / 1_000_000
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is not None and stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - any file a header read fails on would be an input error
        return None
    return None


def _look(entry: Entry, seen: Listing, probe: int) -> None:
    """Count the first listing of a file: its error, whether its local file is there, its duration."""
    if entry.error is not None:
        seen.error_count += 1
        if len(seen.errors) < SHOWN:
            seen.errors.append((entry.name, entry.error))
        return
    if not isinstance(entry.source(), str):
        seen.other += 1
        if entry.duration_s is not None:
            seen.span_seconds += entry.duration_s  # a manifest span of known length
        return
    seen.local_files += 1
    if not os.path.isfile(entry.name):
        seen.missing_count += 1
        if len(seen.missing) < SHOWN:
            seen.missing.append(entry.name)
    elif seen.probed < probe:
        seen.probed += 1
        seconds = duration_s(entry.name)
        if seconds is None:
            seen.unopened.append(entry.name)
        else:
            seen.seconds += seconds


def dry_run(inputs: Sequence[str], output_dir: str, sources: SourceOptions = SourceOptions(), *,
            resume: bool = False, retry_errors: bool = False, probe: int = PROBE) -> list[str]:
    """The dry run's report, as lines (the CLI prints them)."""
    out = None if storage.is_url(str(output_dir)) else Path(output_dir)
    old = read_old(out, retry_errors)
    seen = Listing()

    for step, index, entry, first in results_io.plan_steps(expand_inputs(inputs, sources), old.finished,
                                                           old.repeats_done):
        seen.steps[step] += 1
        seen.entries += 1
        seen.references += entry.text is not None
        if index == first:  # a file's repeats are not transcribed: counted once
            _look(entry, seen, probe)
    return _report(seen, old, output_dir, out, resume, retry_errors, probe)


def _report(seen: Listing, old: OldRecords, output_dir: str, out: Optional[Path], resume: bool,
            retry_errors: bool, probe: int) -> list[str]:
    lines = ["whisper-nnx dry run: no model loaded, nothing written",
             f"entries: {seen.entries:,} ({seen.references:,} with a reference text)"]
    lines += _problems(seen)
    lines.append(_hours(seen, probe))
    steps = seen.steps
    duplicates = steps[results_io.READY] + steps[results_io.REPEAT]
    lines.append(f"duplicates: {duplicates:,} entries list a file listed before (each gets a duplicate record)")
    if out is None:
        lines.append(f"output: {output_dir} is a URL: its records are not read by a dry run")
    elif not old.total:
        lines.append(f"output: {output_dir} {'holds no records' if out.is_dir() else 'does not exist yet'}")
    else:
        k = old.kinds
        lines.append(f"output: {output_dir} holds {old.total:,} records: {k[None]:,} transcripts, "
                     f"{k[records.INPUT]:,} input errors, {k[records.RUN]:,} run errors, "
                     f"{k[records.DUPLICATE]:,} duplicate records")
        if not resume:
            lines.append("  the run would stop: the folder holds results (add --resume); the plan below is --resume's")
        retry = "retried (--retry-errors)" if retry_errors else "kept (--retry-errors would redo them)"
        lines.append(f"  resume: redoes {k[records.RUN]:,} run errors; input errors {retry}")
    todo = steps[results_io.TODO] + steps[results_io.READY] + steps[results_io.REPEAT]
    lines.append(f"plan: {steps[results_io.SKIP]:,} entries already have a record; {todo:,} to write "
                 f"({steps[results_io.TODO]:,} to transcribe or record as errors, {duplicates:,} duplicate records)")
    return lines


def _problems(seen: Listing) -> list[str]:
    lines = [f"unreadable: {seen.error_count:,} entries name no readable input (input-error records)"]
    lines += [f"  {reason if reason.startswith(name) else f'{name}: {reason}'}" for name, reason in seen.errors]
    lines.append(f"missing: {seen.missing_count:,} of {seen.local_files:,} local files (listed once each) do not exist "
                 "(input-error records)")
    lines += [f"  {name}" for name in seen.missing]
    if seen.unopened:
        lines.append(f"unopened: {len(seen.unopened):,} of {seen.probed:,} files probed have no readable header")
        lines += [f"  {name}" for name in seen.unopened[:SHOWN]]
    return lines


def _hours(seen: Listing, probe: int) -> str:
    present = seen.local_files - seen.missing_count
    read = seen.probed - len(seen.unopened)
    line = (f"audio: {seen.seconds / 3600:.3f} h ({seen.seconds:,.1f} s) in {read:,} file headers read "
            f"(--dry-run-probe {probe})")
    if present > seen.probed and read:
        line += f"; about {seen.seconds / read * (present - len(seen.unopened)) / 3600:.1f} h for all {present:,} " \
                "local files (estimated from those read)"
    if seen.span_seconds:
        line += f"; {seen.span_seconds / 3600:.3f} h in manifest spans"
    if seen.other:
        line += f"; {seen.other:,} other entries (URLs, dataset rows, spans) not counted unless a span gives its length"
    return line
