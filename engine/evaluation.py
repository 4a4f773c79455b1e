"""`whisper-nnx eval`: word error rate of a run against each input's reference text, as the
Open ASR Leaderboard reports it, with the run's throughput.

    entries (reference `text`) + results.jsonl records (hypotheses) -> eval.json, eval.md

Both sides are normalized with Whisper's own text normalizers (`whisper_normalizer`, equal to
openai-whisper's `EnglishTextNormalizer` / `BasicTextNormalizer`): the English one for inputs
transcribed as English, the basic one otherwise. The word alignment is jiwer's; the corpus WER
is (substitutions + deletions + insertions) / reference words over every scored input, which is
what `jiwer.wer(references, hypotheses)` gives on the same pairs.

Which inputs count: every entry with a reference that is not empty after normalization. An input
whose record is an error counts with an empty hypothesis (all its words deleted) and is listed
in `failed`: a run that drops inputs does not get a better WER for it. Duplicate listings are
scored once. Entries without a reference are counted in `inputs_without_reference`.

At corpus scale: the records are read one at a time and none is kept (a few numbers per input
instead), and eval.json / eval.md are written a row at a time: memory grows with the entries,
not with the records' text.

Throughput: `wall_s` is the wall time of the run that wrote the summary (a resumed run's own
time and audio), `rtfx` its audio seconds over that time; `audio_s` is the audio of every scored
input.
"""

from __future__ import annotations

import array
import json
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from .entry import Entry, record_key
from .files import fsync_directory
from .records import DUPLICATE, error_kind

EVAL_JSON, EVAL_MD = "eval.json", "eval.md"


class EvalUnavailable(RuntimeError):
    """jiwer or the normalizer is not installed."""


def _tools():
    try:
        import jiwer
        from whisper_normalizer.basic import BasicTextNormalizer
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as err:
        raise EvalUnavailable(f"whisper-nnx eval needs jiwer and whisper-normalizer: pip install "
                              f"'whisper-nnx[eval]' ({err})") from err
    return jiwer, EnglishTextNormalizer(), BasicTextNormalizer()


def check_available() -> None:
    _tools()


def wer(references: str | Sequence[str], hypotheses: str | Sequence[str], language: str = "en") -> float:
    """Word error rate, a fraction, of `hypotheses` against `references` (one string each, or
    equal-length sequences of pairs), normalized as `score` normalizes: Whisper's English
    normalizer for "en", the basic one otherwise. Over several pairs it is the corpus rate, the
    errors of every pair over the words of every reference, as `score`'s `wer` (in percent) and
    `jiwer.wer(references, hypotheses)` on the normalized pairs. The benchmarks score with it."""
    jiwer, english, basic = _tools()
    normalize = english if language == "en" else basic
    pairs = [(references, hypotheses)] if isinstance(references, str) else list(zip(references, hypotheses,
                                                                                       strict=True))
    errors = words = 0
    for reference, hypothesis in pairs:
        reference, hypothesis = " ".join(normalize(reference).split()), " ".join(normalize(hypothesis).split())
        if not reference:  # nothing said: every written word is inserted (jiwer wants a reference)
            errors += len(hypothesis.split())
            continue
        counts = _counts(jiwer, reference, hypothesis)
        errors += counts["substitutions"] + counts["deletions"] + counts["insertions"]
        words += len(reference.split())
    if not words:
        raise ValueError("no reference words to score against")
    return errors / words


def score(entries: Sequence[Entry], records: Iterable[Mapping]) -> dict:
    """Per-input and corpus word error counts of `records` (read back from results.jsonl, or
    Transcripts) against the entries' references.

    The records are read once, one at a time, and none is kept: each is scored as it comes (a
    later record of an input replaces an earlier one) into a few numbers per input, so memory
    grows with the entries, not with the records' text. `per_input` is `PerInput`: the rows,
    made again from those numbers on each pass, in entry order."""
    jiwer, english, basic = _tools()
    first: dict[str, int] = {}  # key -> index of the entry scored for it (its first listing)
    for index, entry in enumerate(entries):
        if entry.error is not None and entry.text is None:
            continue
        first.setdefault(entry.key, index)
    table = _Scores(len(entries))
    for record in records:
        if error_kind(record) == DUPLICATE:
            continue
        index = first.get(record_key(record))
        if index is not None and entries[index].text is not None:
            table.put(index, entries[index].text, record, jiwer, english, basic)
    failed, without, audio = [], 0, 0  # audio: summed in entry order, as a sum() of the rows'
    for index, entry in enumerate(entries):
        if first.get(entry.key) != index:  # a repeat, or an entry naming no audio without a reference
            continue
        if entry.text is None:
            without += 1
            continue
        if table.state[index] == _NONE:  # no record: every word deleted
            table.put(index, entry.text, None, jiwer, english, basic)
        if table.state[index] == _EMPTY:
            without += 1
            continue
        if index in table.errors:
            failed.append(entry.name)
        audio += table.durations[index] or 0.0
    rows = PerInput(entries, table)
    total = {k: sum(getattr(table, k)) for k in ("words", "substitutions", "deletions", "insertions", "hits")}
    errors = total["substitutions"] + total["deletions"] + total["insertions"]
    return {"wer": 100.0 * errors / total["words"] if total["words"] else None, **total,
            "inputs": len(rows), "inputs_without_reference": without, "failed": failed,
            "audio_s": round(audio, 3), "per_input": rows}


_NONE, _ROW, _EMPTY = 0, 1, 2  # an entry's state in _Scores: no record yet, scored, reference empty


class _Scores:
    """The few numbers `score` keeps per entry (by index): word counts, duration, error."""

    def __init__(self, n: int):
        self.state = bytearray(n)
        self.words, self.substitutions, self.deletions, self.insertions, self.hits = (
            array.array("q", bytes(8 * n)) for _ in range(5))
        self.durations: list = [None] * n
        self.errors: dict[int, str] = {}  # index -> the error of an input without a transcript

    def put(self, index: int, text: str, record, jiwer, english, basic) -> None:
        """Score entry `index` (reference `text`) against `record` (None: none written)."""
        language = (record or {}).get("language") or "en"
        normalize = english if language == "en" else basic
        reference = normalize(text).split()
        for column in (self.words, self.substitutions, self.deletions, self.insertions, self.hits):
            column[index] = 0
        self.errors.pop(index, None)
        self.durations[index] = None
        if not reference:
            self.state[index] = _EMPTY
            return
        ok = record is not None and not record.get("error")
        hypothesis = normalize(record["text"]).split() if ok else []
        counts = _counts(jiwer, " ".join(reference), " ".join(hypothesis))
        self.state[index] = _ROW
        self.words[index] = len(reference)
        for name in ("substitutions", "deletions", "insertions", "hits"):
            getattr(self, name)[index] = counts[name]
        self.durations[index] = (record or {}).get("duration_s")
        if not ok:
            self.errors[index] = (record or {}).get("error") or "no record"

    def row(self, index: int, name: str) -> dict:
        words, errors = self.words[index], self.substitutions[index] + self.deletions[index] + self.insertions[index]
        return {"path": name, "words": words, "substitutions": self.substitutions[index],
                "deletions": self.deletions[index], "insertions": self.insertions[index], "hits": self.hits[index],
                "wer": 100.0 * errors / words, "duration_s": self.durations[index],
                "error": self.errors.get(index)}


class PerInput:
    """`score`'s rows, one per scored input in entry order ({path, words, substitutions, deletions,
    insertions, hits, wer, duration_s, error}), made on each pass from `score`'s numbers: an
    iterable with a length, compared equal to the list of its rows."""

    def __init__(self, entries: Sequence[Entry], table: _Scores):
        self.entries, self.table = entries, table
        self.count = table.state.count(_ROW)

    def __iter__(self) -> Iterator[dict]:
        for index, entry in enumerate(self.entries):
            if self.table.state[index] == _ROW:  # only an input's first listing is scored
                yield self.table.row(index, entry.name)

    def __len__(self) -> int:
        return self.count

    def __eq__(self, other) -> bool:
        return list(self) == (list(other) if isinstance(other, PerInput) else other)

    def __repr__(self) -> str:
        return f"PerInput({len(self)} rows)"


def _counts(jiwer, reference: str, hypothesis: str) -> dict:
    if not hypothesis:  # jiwer wants a non-empty hypothesis string: all words deleted
        return {"substitutions": 0, "deletions": len(reference.split()), "insertions": 0, "hits": 0}
    out = jiwer.process_words(reference, hypothesis)
    return {"substitutions": out.substitutions, "deletions": out.deletions, "insertions": out.insertions,
            "hits": out.hits}


def report(scores: dict, summary: dict, settings: dict) -> dict:
    """eval.json's content: the scores, the run's throughput and its settings."""
    wall = summary.get("wall_s") or 0.0
    run_audio = (summary.get("audio_hours") or 0.0) * 3600
    return {"wer": None if scores["wer"] is None else round(scores["wer"], 4),
            **{k: v for k, v in scores.items() if k not in ("wer", "per_input")},
            "wall_s": wall, "rtfx": round(run_audio / wall, 3) if wall else None,
            "resumed": bool(summary.get("skipped_already_done")), "settings": settings,
            "per_input": scores["per_input"]}


def markdown(result: dict) -> str:
    """The summary table, then one row per input."""
    return "\n".join(_markdown_lines(result))


def _markdown_lines(result: dict) -> Iterator[str]:
    wer = "-" if result["wer"] is None else f"{result['wer']:.2f}"
    rtfx = "-" if result["rtfx"] is None else f"{result['rtfx']:.1f}"
    yield from ["| WER % | words | sub | del | ins | inputs | failed | no reference | audio s | wall s | RTFx |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {wer} | {result['words']} | {result['substitutions']} | {result['deletions']} | "
                f"{result['insertions']} | {result['inputs']} | {len(result['failed'])} | "
                f"{result['inputs_without_reference']} | {result['audio_s']:.1f} | {result['wall_s']:.1f} | "
                f"{rtfx} |"]
    yield from ["", "| input | words | sub | del | ins | WER % | error |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["per_input"]:
        yield (f"| {r['path']} | {r['words']} | {r['substitutions']} | {r['deletions']} | {r['insertions']} | "
               f"{r['wer']:.2f} | {r['error'] or ''} |")


def _json_chunks(result: dict) -> Iterator[str]:
    """`json.dumps(result, indent=2, ensure_ascii=False)`, the same text, in pieces: `per_input`
    (the last key, as `report` puts it) a row at a time."""
    head = json.dumps({**result, "per_input": []}, indent=2, ensure_ascii=False)
    rows = iter(result["per_input"])
    row = next(rows, None)
    if row is None or not head.endswith('"per_input": []\n}'):
        yield json.dumps({**result, "per_input": list(result["per_input"])}, indent=2, ensure_ascii=False)
        return
    yield head[:-len("[]\n}")] + "["
    while row is not None:
        yield "\n    " + json.dumps(row, indent=2, ensure_ascii=False).replace("\n", "\n    ")
        row = next(rows, None)
        if row is not None:
            yield ","
    yield "\n  ]\n}"


def write(out: Path, result: dict) -> str:
    """eval.json and eval.md in `out` (atomically; written a row at a time, never held whole);
    returns the summary table."""
    _write_lines(out / EVAL_JSON, _json_chunks(result), "")
    _write_lines(out / EVAL_MD, _markdown_lines(result), "\n")
    return "\n".join(list(_markdown_lines({**result, "per_input": ()}))[:3])


def _write_lines(path: Path, pieces: Iterable[str], separator: str) -> None:
    """`separator.join(pieces) + "\n"` into `path` through a temp file beside it, fsynced and
    renamed into place (as `atomic_write_text`, which would want the whole text)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            first = True
            for piece in pieces:
                handle.write(piece if first else separator + piece)
                first = False
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
