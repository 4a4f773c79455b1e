"""The record: one JSON object per input entry, built here and nowhere else.

Every record has the same keys, whichever path made it (`Transcriber.transcribe`,
`decode_clips`, the CLI's manifest and duplicate entries):

    path        the entry as given (a record is matched to its entry by `inputs.entry_key`)
    text        the transcript ("" for a failure or a silent file)
    language    code of the language decoded in, or None
    duration_s  seconds of the file (before voice activity keeps its speech), None when unknown
    segments    [{start, end, text, avg_logprob, compression_ratio, no_speech_prob, temperature, words?}]
    windows     30 s windows decoded
    error       None, or one line saying why there is no transcript
    error_kind  None, or INPUT (the file is bad: final), RUN (the run failed it: `--resume` redoes
                it), DUPLICATE (a repeated entry; `duplicate_of` names the 1-based entry it repeats)

plus optional extras (`language_probs`; `dropped_segments` with `--hallucination-filter`, each a
segment with its `dropped` reason; a segment's `language` with `--language-per-window`;
`decode_clips`' window statistics and `tokens`; the CLI's `model`, `dtype`, `long_form`, `mesh`,
`sharding`).
"""

from __future__ import annotations

from typing import Optional

INPUT, RUN, DUPLICATE = "input", "run", "duplicate"  # the error kinds
# The scalar fields every record has: the typed columns of record tables (results.parquet, Ray's output)
CORE_FIELDS = ("path", "text", "language", "duration_s", "windows", "error", "error_kind")


def transcript(path: str, *, text: str, language: Optional[str], duration_s: Optional[float],
               segments: list[dict], windows: int, **extra) -> dict:
    """The record of an entry that was transcribed (silence included: empty text)."""
    return {"path": path, "text": text, "language": language, "duration_s": duration_s, "segments": segments,
            "windows": windows, "error": None, "error_kind": None, **extra}


def failure(path: str, error: str, kind: str, *, duration_s: Optional[float] = None, **extra) -> dict:
    """The record of an entry without a transcript; `error` is one line naming the entry."""
    if kind not in (INPUT, RUN, DUPLICATE):
        raise ValueError(f"error kind must be {INPUT}, {RUN} or {DUPLICATE}, got {kind!r}")
    return {"path": path, "text": "", "language": None, "duration_s": duration_s, "segments": [], "windows": 0,
            "error": " ".join(error.split()), "error_kind": kind, **extra}


def duplicate(path: str, first_index: int) -> dict:
    """The record of a repeated entry: the same file as entry `first_index` (0-based)."""
    return failure(path, f"{path}: duplicate entry: the same file is listed as entry {first_index + 1}, "
                         "transcribed once there", DUPLICATE, duplicate_of=first_index + 1)


def one_line(err: BaseException) -> str:
    """An exception as a one-line reason for a record."""
    text = str(err) or type(err).__name__
    if not isinstance(err, ValueError):
        text = f"{type(err).__name__}: {text}"
    return " ".join(text.split())


def is_failure(record: dict) -> bool:
    """Whether the entry has no transcript because of an input or run error (a duplicate
    listing is not a failure: its file is transcribed at its first listing)."""
    return error_kind(record) in (INPUT, RUN)


def error_kind(record: dict) -> Optional[str]:
    """None for a transcript, else INPUT, RUN or DUPLICATE (records from before error kinds
    existed: duplicates by their message, other errors count as input errors)."""
    if record.get("error") is None:
        return None
    kind = record.get("error_kind")
    if kind in (INPUT, RUN, DUPLICATE):
        return kind
    return DUPLICATE if "duplicate entry" in str(record["error"]) else INPUT
