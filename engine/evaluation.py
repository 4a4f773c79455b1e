"""`whisper-nnx eval`: word error rate of a run against each input's reference text, as the
Open ASR Leaderboard reports it, its character error rate, and the run's throughput.

    entries (reference `text`) + results.jsonl records (hypotheses) -> eval.json, eval.md

Both sides are normalized with Whisper's own text normalizers (`whisper_normalizer`, equal to
openai-whisper's `EnglishTextNormalizer` / `BasicTextNormalizer`): the English one for inputs
transcribed as English, the basic one otherwise. The word alignment is jiwer's; the corpus WER
is (substitutions + deletions + insertions) / reference words over every scored input, which is
what `jiwer.wer(references, hypotheses)` gives on the same pairs. The character error rate (CER,
for languages written without spaces) is counted on the same normalized texts with their
whitespace removed: (character substitutions + deletions + insertions) / reference characters,
per input and over every scored input.

`score_folder` scores an output folder's records as they are, without transcribing (`eval
--score-only`).

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
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from absl import logging

from .entry import Entry, record_key
from .files import atomic_write_pieces
from .records import DUPLICATE, error_kind
from .results import RESULTS, RecordsOf, process_files

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
    grows with the entries, not with the records' text. Records read from an output folder
    (`results.RecordsOf`) are read by pyarrow's JSON reader, only the fields scored
    (`_record_fields`), when it can read them; else, and for any other iterable, as they are.
    `per_input` is `PerInput`: the rows, made again from those numbers on each pass, in entry
    order."""
    tools = _tools()
    first, leading = _first_listings(entries)
    fields = _record_fields(records)
    table = None
    if fields is not None:
        try:
            table = _scored(entries, first, fields, tools)
        except _Unreadable as err:  # a line pyarrow does not read as json.loads does: read them as they are
            logging.info("eval: reading the records again one line at a time (%s)", err)
    if table is None:
        table = _scored(entries, first, records, tools)
    failed, without, audio = [], 0, 0  # audio: summed in entry order, as a sum() of the rows'
    for index, entry in enumerate(entries):
        if not leading[index]:  # a repeat, or an entry naming no audio without a reference
            continue
        if entry.text is None:
            without += 1
            continue
        if table.state[index] == _NONE:  # no record: every word deleted
            table.put(index, entry.text, None, *tools)
        if table.state[index] == _EMPTY:
            without += 1
            continue
        if index in table.errors:
            failed.append(entry.name)
        audio += table.durations[index] or 0.0
    rows = PerInput(entries, table)
    total = {k: sum(getattr(table, k)) for k in ("words", "substitutions", "deletions", "insertions", "hits")}
    errors = total["substitutions"] + total["deletions"] + total["insertions"]
    chars, char_errors = sum(table.chars), sum(table.char_errors)
    return {"wer": 100.0 * errors / total["words"] if total["words"] else None, **total,
            "cer": 100.0 * char_errors / chars if chars else None, "chars": chars, "char_errors": char_errors,
            "inputs": len(rows), "inputs_without_reference": without, "failed": failed,
            "audio_s": round(audio, 3), "per_input": rows}


def _first_listings(entries: Sequence[Entry]) -> tuple[dict[str, int], bytearray]:
    """(key -> index of the entry scored for it: its first listing that names audio or has a
    reference, a flag per entry: whether it is that listing). Each entry's key is made once."""
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.error is not None and entry.text is None:
            continue
        first.setdefault(entry.key, index)
    leading = bytearray(len(entries))
    for index in first.values():
        leading[index] = 1
    return first, leading


def _scored(entries: Sequence[Entry], first: Mapping[str, int], records: Iterable[Mapping], tools) -> "_Scores":
    """A new `_Scores` holding every record of an entry with a reference (its last record wins)."""
    table = _Scores(len(entries))
    for record in records:
        if record.get("error") is not None and error_kind(record) == DUPLICATE:
            continue
        index = first.get(record_key(record))
        if index is not None and entries[index].text is not None:
            table.put(index, entries[index].text, record, *tools)
    return table


class _Unreadable(Exception):
    """pyarrow could not read a results file as `_record_fields` asks (a line that is not a JSON
    object, a field of another type): score reads the lines again."""


# The fields of a record `score` reads (the others are skipped unparsed into Python objects)
_FIELDS = ("path", "row", "text", "language", "duration_s", "error", "error_kind")
_BLOCK = 1 << 20  # bytes pyarrow's reader parses at a time (longer lines too; more holds more memory)


def _record_fields(records: Iterable[Mapping]) -> Optional[Iterator[dict]]:
    """For an output folder's records (`RecordsOf`), an iterator of their `_FIELDS` (as dicts)
    read by pyarrow's JSON reader, a block of lines at a time on its threads (about ten times
    faster than `json.loads` of whole records, which carry segments); None for any other
    iterable or without pyarrow. Lines without a `path` are skipped as `parse_record` skips them;
    what pyarrow cannot read raises `_Unreadable` while iterating."""
    if not isinstance(records, RecordsOf):
        return None
    try:
        import pyarrow as pa
        import pyarrow.json as pj
    except ImportError:
        return None
    if not hasattr(pj, "open_json"):  # pyarrow < 19: no streaming reader
        return None
    schema = pa.schema([(name, pa.float64() if name == "duration_s" else pa.string()) for name in _FIELDS])
    paths = [path for path in [records.out / RESULTS, *process_files(records.out)] if path.exists()]
    return _arrow_fields(paths, schema, pa, pj)


def _arrow_fields(paths: Sequence[Path], schema, pa, pj) -> Iterator[dict]:
    """The records' `_FIELDS` of each results file in `paths` (see `_record_fields`)."""
    read = pj.ReadOptions(block_size=_BLOCK)
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    for path in paths:
        if not path.stat().st_size:
            continue
        try:
            for batch in pj.open_json(path, read_options=read, parse_options=parse):
                columns = [batch.column(name).to_pylist() for name in _FIELDS]
                for values in zip(*columns):
                    if values[0] is not None:
                        yield dict(zip(_FIELDS, values))
        except (pa.ArrowException, ValueError) as err:
            raise _Unreadable(f"{path}: {err}") from None


_NONE, _ROW, _EMPTY = 0, 1, 2  # an entry's state in _Scores: no record yet, scored, reference empty


class _Scores:
    """The few numbers `score` keeps per entry (by index): word and character counts, duration,
    error."""

    def __init__(self, n: int):
        self.state = bytearray(n)
        self.words, self.substitutions, self.deletions, self.insertions, self.hits, self.chars, self.char_errors = (
            array.array("q", bytes(8 * n)) for _ in range(7))
        self.durations: list = [None] * n
        self.errors: dict[int, str] = {}  # index -> the error of an input without a transcript

    def put(self, index: int, text: str, record, jiwer, english, basic) -> None:
        """Score entry `index` (reference `text`) against `record` (None: none written)."""
        language = (record or {}).get("language") or "en"
        normalize = english if language == "en" else basic
        reference = normalize(text).split()
        for column in (self.words, self.substitutions, self.deletions, self.insertions, self.hits, self.chars,
                       self.char_errors):
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
        self.chars[index], self.char_errors[index] = _char_counts(jiwer, reference, hypothesis)
        self.durations[index] = (record or {}).get("duration_s")
        if not ok:
            self.errors[index] = (record or {}).get("error") or "no record"

    def row(self, index: int, name: str) -> dict:
        words, errors = self.words[index], self.substitutions[index] + self.deletions[index] + self.insertions[index]
        chars, char_errors = self.chars[index], self.char_errors[index]
        return {"path": name, "words": words, "substitutions": self.substitutions[index],
                "deletions": self.deletions[index], "insertions": self.insertions[index], "hits": self.hits[index],
                "wer": 100.0 * errors / words, "chars": chars, "char_errors": char_errors,
                "cer": 100.0 * char_errors / chars, "duration_s": self.durations[index],
                "error": self.errors.get(index)}


class PerInput:
    """`score`'s rows, one per scored input in entry order ({path, words, substitutions, deletions,
    insertions, hits, wer, chars, char_errors, cer, duration_s, error}), made on each pass from `score`'s numbers: an
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


def _char_counts(jiwer, reference: Sequence[str], hypothesis: Sequence[str]) -> tuple[int, int]:
    """(reference characters, character errors) of a pair of normalized word lists, their
    whitespace removed: the characters of the words joined, edits counted by jiwer."""
    ref, hyp = "".join(reference), "".join(hypothesis)
    if not hyp:  # every character deleted (jiwer wants a non-empty hypothesis)
        return len(ref), len(ref)
    out = jiwer.process_characters(ref, hyp)
    return len(ref), out.substitutions + out.deletions + out.insertions


def report(scores: dict, summary: dict, settings: dict) -> dict:
    """eval.json's content: the scores, the run's throughput and its settings."""
    wall = summary.get("wall_s") or 0.0
    run_audio = (summary.get("audio_hours") or 0.0) * 3600
    return {"wer": None if scores["wer"] is None else round(scores["wer"], 4),
            "cer": None if scores["cer"] is None else round(scores["cer"], 4),
            **{k: v for k, v in scores.items() if k not in ("wer", "cer", "per_input")},
            "wall_s": wall, "rtfx": round(run_audio / wall, 3) if wall else None,
            "resumed": bool(summary.get("skipped_already_done")), "settings": settings,
            "per_input": scores["per_input"]}


def markdown(result: dict) -> str:
    """The summary table, then one row per input."""
    return "\n".join(_markdown_lines(result))


def _markdown_lines(result: dict) -> Iterator[str]:
    wer = "-" if result["wer"] is None else f"{result['wer']:.2f}"
    cer = "-" if result.get("cer") is None else f"{result['cer']:.2f}"
    rtfx = "-" if result["rtfx"] is None else f"{result['rtfx']:.1f}"
    yield from ["| WER % | CER % | words | sub | del | ins | inputs | failed | no reference | audio s | wall s | RTFx |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {wer} | {cer} | {result['words']} | {result['substitutions']} | {result['deletions']} | "
                f"{result['insertions']} | {result['inputs']} | {len(result['failed'])} | "
                f"{result['inputs_without_reference']} | {result['audio_s']:.1f} | {result['wall_s']:.1f} | "
                f"{rtfx} |"]
    yield from ["", "| input | words | sub | del | ins | WER % | CER % | error |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["per_input"]:
        yield (f"| {r['path']} | {r['words']} | {r['substitutions']} | {r['deletions']} | {r['insertions']} | "
               f"{r['wer']:.2f} | {r['cer']:.2f} | {r['error'] or ''} |")


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
    """`separator.join(pieces) + "\n"` into `path`, atomically and streamed (`atomic_write_pieces`)."""
    def joined() -> Iterable[str]:
        for i, piece in enumerate(pieces):
            yield piece if i == 0 else separator + piece
        yield "\n"

    atomic_write_pieces(path, joined())


class NothingToScore(ValueError):
    """`score_folder` found no records in the output folder."""


def score_folder(entries: Iterable[Entry], out: Path, settings: dict) -> tuple[dict, str]:
    """`eval --score-only`: score the records already in output folder `out` (results.jsonl and
    the per-process files) against `entries`' references without transcribing anything, write
    eval.json and eval.md there; returns the result and its summary table. The throughput is that of the run
    `summary.json` describes (none there: `wall_s` 0, `rtfx` None). The folder's run lock is
    held meanwhile: a run still writing records there is refused (`results.RunLocked`); entries
    without a record count as failed, every word deleted, as in `score`."""
    from .progress import SUMMARY
    from .results import RunLock, iter_records

    if not out.is_dir() or next(iter_records(out), None) is None:
        raise NothingToScore(f"{out} holds no records to score: transcribe first (whisper-nnx eval without "
                             "--score-only)")
    entries = list(entries)
    with RunLock(out):
        summary_file = out / SUMMARY
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}
        result = report(score(entries, RecordsOf(out)), summary, {**settings, "score_only": True})
        table = write(out, result)
    return result, table
