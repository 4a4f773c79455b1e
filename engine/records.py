"""The record: one `Transcript` per input entry, built here and serialized here.

Every record has the same keys, whichever path made it (`Transcriber.transcribe`,
`decode_clips`, the run's manifest and duplicate entries):

    path        the entry as given (a record is matched to its entry by `entry.record_key`)
    text        the transcript ("" for a failure or a silent file)
    language    code of the language decoded in, or None
    duration_s  seconds of the file (before voice activity keeps its speech), None when unknown
    segments    [{seek, start, end, text, avg_logprob, compression_ratio, no_speech_prob, temperature, unlikely,
                words?}]; `unlikely` (`transcribe`'s records; a boolean, of the segment's window):
                its text failed the fallback thresholds (avg_logprob, compression ratio) at every
                temperature tried, e.g. speech in another language through an English-only model
    windows     30 s windows decoded
    error       None, or one line saying why there is no transcript
    error_kind  None, or INPUT (the file is bad: final), RUN (the run failed it: `--resume` redoes
                it), DUPLICATE (a repeated entry; `duplicate_of` names the 1-based entry it repeats)

plus optional extras (`language_probs`; `unlikely_segments`, in every record `transcribe` makes:
how many of its segments are `unlikely`, 0 when none, to filter records on; `dropped_segments`,
segments left out of the text, each with its `dropped` reason: always present with
`--hallucination-filter` (its reasons), else only when one was dropped: punctuation-only text
over a window that is likely non-speech, "punctuation only over likely non-speech"; a segment's
`language` with `--language-per-window`;
`decode_clips`' window statistics, with its `unlikely`; the run's `model`, `dtype`, `long_form`, `mesh`, `sharding`;
`row`: the dataset row `FILE:ROW` of an entry named by its --id-column value, which rows may share:
the record's identity then, `entry.record_key`).

A `Transcript` also carries the decoded `tokens` (for Python users: `transcript["tokens"]`),
and each of its segments its own (`seek`: its window's start in 10 ms frames, and `tokens`, as
the reference's segments). Tokens are never written (`as_dict`, the one serialization:
results.jsonl lines, per-format files, Ray's rows, Parquet, leaves them out) but in a
transcript's own json file, which has the reference's segment fields (writers.py). A Transcript
reads like the dict it serializes to (`record["text"]`, `record.get("error")`, `"language_probs"
in record`); records read back from results.jsonl are plain dicts with the same keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional

INPUT, RUN, DUPLICATE = "input", "run", "duplicate"  # the error kinds
# The scalar fields every record has: the typed columns of record tables (results.parquet, Ray's output)
CORE_FIELDS = ("path", "text", "language", "duration_s", "windows", "error", "error_kind")
_FIELDS = ("path", "text", "language", "duration_s", "segments", "windows", "error", "error_kind")
TOKENS = "tokens"  # a Transcript's decoded tokens: never part of a written record
SEGMENT_LISTS = ("segments", "dropped_segments")  # keys whose segments carry their tokens until written


@dataclasses.dataclass(eq=False)
class Transcript(Mapping[str, Any]):
    """One input entry's result (see the module docstring); a read-only mapping of its record's
    keys plus `tokens`, equal to a dict with the same items."""

    path: str
    text: str = ""
    language: Optional[str] = None
    duration_s: Optional[float] = None
    segments: list = dataclasses.field(default_factory=list)
    windows: int = 0
    error: Optional[str] = None
    error_kind: Optional[str] = None
    tokens: Optional[list] = None  # the decoded text tokens; None for a failure
    extra: dict = dataclasses.field(default_factory=dict)  # the optional keys, in record order

    def to_record(self) -> dict:
        """The record as results.jsonl holds it: every key but `tokens` (its segments' too)."""
        return {**{name: _written(name, getattr(self, name)) for name in _FIELDS},
                **{name: _written(name, value) for name, value in self.extra.items()}}

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        if key == TOKENS and self.tokens is not None:
            return self.tokens
        return self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from _FIELDS
        if self.tokens is not None:
            yield TOKENS
        yield from self.extra

    def __len__(self) -> int:
        return len(_FIELDS) + (self.tokens is not None) + len(self.extra)


def as_dict(record: Mapping) -> dict:
    """The written form of a record (a Transcript, or a record read back): a new dict, no tokens."""
    if isinstance(record, Transcript):
        return record.to_record()
    return {key: _written(key, value) for key, value in record.items() if key != TOKENS}


def _written(key: str, value: Any) -> Any:
    """A record's value as written: lists of segments without their `tokens` (a Transcript's
    segments carry them, as the reference's do; the per-file json writes them)."""
    if key in SEGMENT_LISTS and isinstance(value, list):
        return [{k: v for k, v in s.items() if k != TOKENS} if isinstance(s, Mapping) else s for s in value]
    return value


def transcript(path: str, *, text: str, language: Optional[str], duration_s: Optional[float],
               segments: list[dict], windows: int, tokens: Optional[list] = None, **extra) -> Transcript:
    """The record of an entry that was transcribed (silence included: empty text)."""
    return Transcript(path, text, language, duration_s, segments, windows, tokens=tokens, extra=extra)


def failure(path: str, error: str, kind: str, *, duration_s: Optional[float] = None, **extra) -> Transcript:
    """The record of an entry without a transcript; `error` is one line naming the entry."""
    if kind not in (INPUT, RUN, DUPLICATE):
        raise ValueError(f"error kind must be {INPUT}, {RUN} or {DUPLICATE}, got {kind!r}")
    return Transcript(path, duration_s=duration_s, error=" ".join(error.split()), error_kind=kind, extra=extra)


def duplicate(path: str, first_index: int, **extra) -> Transcript:
    """The record of a repeated entry: the same file as entry `first_index` (0-based)."""
    return failure(path, f"{path}: duplicate entry: the same file is listed as entry {first_index + 1}, "
                         "transcribed once there", DUPLICATE, duplicate_of=first_index + 1, **extra)


def one_line(err: BaseException) -> str:
    """An exception as a one-line reason for a record."""
    text = str(err) or type(err).__name__
    if not isinstance(err, ValueError):
        text = f"{type(err).__name__}: {text}"
    return " ".join(text.split())


def is_failure(record: Mapping) -> bool:
    """Whether the entry has no transcript because of an input or run error (a duplicate
    listing is not a failure: its file is transcribed at its first listing)."""
    return error_kind(record) in (INPUT, RUN)


def error_kind(record: Mapping) -> Optional[str]:
    """None for a transcript, else INPUT, RUN or DUPLICATE (records from before error kinds
    existed: duplicates by their message, other errors count as input errors)."""
    if record.get("error") is None:
        return None
    kind = record.get("error_kind")
    if kind in (INPUT, RUN, DUPLICATE):
        return kind
    return DUPLICATE if "duplicate entry" in str(record["error"]) else INPUT
