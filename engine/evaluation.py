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

Throughput: `wall_s` is the wall time of the run that wrote the summary (a resumed run's own
time and audio), `rtfx` its audio seconds over that time; `audio_s` is the audio of every scored
input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .entry import Entry, record_key
from .files import atomic_write_text
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
    Transcripts) against the entries' references."""
    jiwer, english, basic = _tools()
    by_key = {record_key(r): r for r in records if error_kind(r) != DUPLICATE}
    rows, failed, without, seen = [], [], 0, set()
    for entry in entries:
        if entry.key in seen or entry.error is not None and entry.text is None:
            continue
        seen.add(entry.key)
        record = by_key.get(entry.key)
        if entry.text is None:
            without += 1
            continue
        language = (record or {}).get("language") or "en"
        normalize = english if language == "en" else basic
        reference = normalize(entry.text).split()
        if not reference:
            without += 1
            continue
        ok = record is not None and not record.get("error")
        hypothesis = normalize(record["text"]).split() if ok else []
        if not ok:
            failed.append(entry.name)
        counts = _counts(jiwer, " ".join(reference), " ".join(hypothesis))
        rows.append({"path": entry.name, "words": len(reference), **counts,
                     "wer": 100.0 * (counts["substitutions"] + counts["deletions"] + counts["insertions"])
                     / len(reference),
                     "duration_s": (record or {}).get("duration_s"), "error": None if ok else
                     (record or {}).get("error") or "no record"})
    total = {k: sum(r[k] for r in rows) for k in ("words", "substitutions", "deletions", "insertions", "hits")}
    errors = total["substitutions"] + total["deletions"] + total["insertions"]
    return {"wer": 100.0 * errors / total["words"] if total["words"] else None, **total,
            "inputs": len(rows), "inputs_without_reference": without, "failed": failed,
            "audio_s": round(sum(r["duration_s"] or 0.0 for r in rows), 3), "per_input": rows}


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
    wer = "-" if result["wer"] is None else f"{result['wer']:.2f}"
    rtfx = "-" if result["rtfx"] is None else f"{result['rtfx']:.1f}"
    lines = ["| WER % | words | sub | del | ins | inputs | failed | no reference | audio s | wall s | RTFx |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {wer} | {result['words']} | {result['substitutions']} | {result['deletions']} | "
             f"{result['insertions']} | {result['inputs']} | {len(result['failed'])} | "
             f"{result['inputs_without_reference']} | {result['audio_s']:.1f} | {result['wall_s']:.1f} | "
             f"{rtfx} |"]
    lines += ["", "| input | words | sub | del | ins | WER % | error |", "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r['path']} | {r['words']} | {r['substitutions']} | {r['deletions']} | {r['insertions']} | "
              f"{r['wer']:.2f} | {r['error'] or ''} |" for r in result["per_input"]]
    return "\n".join(lines)


def write(out: Path, result: dict) -> str:
    """eval.json and eval.md in `out` (atomically); returns the summary table."""
    atomic_write_text(out / EVAL_JSON, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    table = markdown(result)
    atomic_write_text(out / EVAL_MD, table + "\n")
    return "\n".join(table.split("\n")[:3])
