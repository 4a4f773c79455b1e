"""Output files against the reference CLI's writers (whisper.utils) on the same records."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from whisper.utils import format_timestamp as reference_timestamp
from whisper.utils import get_writer

from whisper_nnx.engine.writers import FORMATS, format_timestamp, write_outputs

TEXT_FORMATS = ("txt", "srt", "vtt", "tsv")
WORD_OPTIONS = ("highlight_words", "max_line_width", "max_line_count", "max_words_per_line")


def _record(segments: list[dict], language: str | None = "en") -> dict:
    """A results.jsonl record as the CLI hands it to write_outputs (extra fields included)."""
    return {"path": "/data/in/clip.wav", "text": "".join(s["text"] for s in segments), "language": language,
            "duration_s": 7400.0, "segments": segments, "error": None, "model": "tiny.en", "dtype": "float32",
            "long_form": "sequential", "mesh": None, "sharding": None}


def _segment(start: float, end: float, text: str, words: list[dict] | None = None) -> dict:
    seg = {"start": start, "end": end, "text": text, "avg_logprob": -0.25, "compression_ratio": 1.3,
           "no_speech_prob": 0.01, "temperature": 0.0}
    if words is not None:
        seg["words"] = words
    return seg


def _words(start: float, *pieces: str, step: float = 0.4, gap_after: dict[int, float] | None = None) -> list[dict]:
    out, t = [], start
    for i, piece in enumerate(pieces):
        out.append({"word": piece, "start": round(t, 3), "end": round(t + step * 0.8, 3), "probability": 0.9})
        t += step + (gap_after or {}).get(i, 0.0)
    return out


PLAIN_RECORDS = {
    "typical": _record([
        _segment(0.0, 2.5, " Hello there."),
        _segment(2.5, 5.0, " General Kenobi!"),
    ]),
    "awkward": _record([
        _segment(0.0, 0.0, ""),
        _segment(0.0, 1.0049, "  leading spaces and trailing  "),
        _segment(1.0049, 1.005, " arrows --> inside -->> text"),
        _segment(1.005, 59.9999, " two\nlines\n"),
        _segment(59.9999, 60.0, " tabs\tin\t\ttext"),
        _segment(60.0005, 599.9995, " Größe — 日本語 🎉 naïve"),
        _segment(3599.9994, 3599.9996, " just under an hour"),
        _segment(3600.0, 3661.001, " over an hour"),
        _segment(7325.5, 7399.9999, "\t ends with a tab\t"),
        _segment(36000.123, 360000.5, " ten and a hundred hours"),
    ], language="de"),
    "empty": _record([], language=None),
}


def _long_words(start: float, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    vocab = ["the", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Größe", "日本語", "naïve",
             "-->", "extraordinarily", "I", "don't", "well,", "yes."]
    pieces = [(" " if i or rng.random() < 0.9 else "") + rng.choice(vocab) for i in range(n)]
    return _words(start, *pieces, step=0.3, gap_after={rng.randrange(n): 3.5, rng.randrange(n): 0.2})


def _word_segment(words: list[dict]) -> dict:
    return _segment(words[0]["start"], words[-1]["end"], "".join(w["word"] for w in words), words)


WORD_RECORDS = {
    "short": _record([
        _word_segment(_words(0.0, " Hello", " there.")),
        _word_segment(_words(1.0, " General", " Kenobi!", step=0.5)),
    ]),
    "awkward": _record([
        _word_segment(_words(0.0, "No", " leading", " space", " -->", " arrow")),
        _word_segment(_words(4.0, " a", " long", " pause", gap_after={0: 3.2})),
        _segment(9.0, 9.0, "", []),  # emptied segment, as the reference leaves it
        _word_segment(_words(12.0, " Größe", " 日本語", " 🎉", " naïve", step=0.004)),
        _word_segment(_words(59.998, " around", " the", " minute", step=0.0015)),
        _word_segment(_words(3599.2, " over", " an", " hour", " mark.", step=0.3)),
        _word_segment(_words(3700.0, " ", " spaces", "  ", " only", "", " words")),
    ]),
    "long": _record([_word_segment(_long_words(10.0 * k, 40, seed=k)) for k in range(6)]),
    "one_word": _record([_word_segment(_words(0.0, " Hi."))]),
    "no_words_found": _record([_segment(0.0, 1.0, " mumble", []), _segment(1.0, 2.0, " mumble", [])]),
}

OPTION_SETS = [
    {},
    {"highlight_words": True},
    {"max_line_width": 20},
    {"max_line_width": 12, "max_line_count": 1},
    {"max_line_width": 24, "max_line_count": 2},
    {"max_line_width": 24, "max_line_count": 2, "highlight_words": True},
    {"max_line_count": 2},
    {"max_words_per_line": 3},
    {"max_words_per_line": 1, "highlight_words": True},
    {"max_words_per_line": 4, "max_line_width": 16},
    {"max_words_per_line": 4, "max_line_width": 16, "max_line_count": 3},
    {"max_line_width": 1, "max_line_count": 1},
    {"max_line_width": 0, "max_line_count": 0, "max_words_per_line": 0, "highlight_words": False},
]


def _write_both(tmp_path: Path, record: dict, fmt: str, reference_record: dict | None = None,
                **options) -> tuple[bytes, bytes]:
    ours_dir, ref_dir = tmp_path / "ours", tmp_path / "ref"
    ours_dir.mkdir(exist_ok=True)
    ref_dir.mkdir(exist_ok=True)
    [path] = write_outputs(record, ours_dir, "clip", (fmt,), **options)
    assert path == ours_dir / f"clip.{fmt}"
    ref_options = {k: options.get(k) for k in WORD_OPTIONS}
    ref_options["highlight_words"] = bool(ref_options["highlight_words"])
    get_writer(fmt, str(ref_dir))(reference_record or record, "/data/in/clip.wav", **ref_options)
    return path.read_bytes(), (ref_dir / f"clip.{fmt}").read_bytes()


@pytest.mark.parametrize("name", sorted(PLAIN_RECORDS))
@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_text_formats_match_reference(tmp_path, name, fmt):
    ours, ref = _write_both(tmp_path, PLAIN_RECORDS[name], fmt)
    assert ours == ref


@pytest.mark.parametrize("name", sorted(PLAIN_RECORDS))
def test_word_options_without_words_change_nothing(tmp_path, name):
    for fmt in ("srt", "vtt"):
        plain, _ = _write_both(tmp_path, PLAIN_RECORDS[name], fmt)
        shaped, ref = _write_both(tmp_path, PLAIN_RECORDS[name], fmt, highlight_words=True, max_line_width=5,
                                  max_line_count=1, max_words_per_line=1)
        assert shaped == plain == ref


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "none")
@pytest.mark.parametrize("name", sorted(WORD_RECORDS))
@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_word_records_match_reference(tmp_path, name, fmt, options):
    ours, ref = _write_both(tmp_path, WORD_RECORDS[name], fmt, **options)
    assert ours == ref


def test_random_word_records_match_reference(tmp_path):
    rng = random.Random(1234)
    for trial in range(60):
        segments = []
        t = rng.uniform(0.0, 3.0) if trial % 3 else 0.0
        for _ in range(rng.randint(1, 6)):
            words = []
            for _ in range(rng.randint(1, 25)):
                t += rng.choice([0.0, 0.05, 0.2, 0.5, 1.0, 3.1, 4.0])
                dur = rng.choice([0.0, 0.0004, 0.1, 0.3, 1.2])
                word = rng.choice(["", " ", ""]) + rng.choice(["a", "bb", "ccc", "longerword", "ß", "-->", "x y"])
                words.append({"word": word, "start": round(t, 3), "end": round(t + dur, 3), "probability": 0.5})
                t += dur
            segments.append(_word_segment(words))
        record = _record(segments)
        options = {"highlight_words": rng.random() < 0.5,
                   "max_line_width": rng.choice([None, 1, 5, 10, 20, 42]),
                   "max_line_count": rng.choice([None, 1, 2, 3]),
                   "max_words_per_line": rng.choice([None, 1, 2, 5])}
        for fmt in ("srt", "vtt"):
            ours, ref = _write_both(tmp_path, record, fmt, **options)
            assert ours == ref, (trial, fmt, options)


def test_segments_without_words_key_are_wordless(tmp_path):
    """Ours leave "words" out where none were found; the reference's results hold an empty list."""
    record = _record([
        _segment(0.0, 1.0, " no words here"),
        _word_segment(_words(1.0, " some", " words")),
        _segment(2.0, 3.0, " none here either"),
    ])
    reference_record = {**record, "segments": [{"words": [], **s} for s in record["segments"]]}
    for fmt in TEXT_FORMATS:
        for options in ({}, {"highlight_words": True}, {"max_line_width": 8, "max_line_count": 1}):
            ours, ref = _write_both(tmp_path, record, fmt, reference_record, **options)
            assert ours == ref, (fmt, options)


@pytest.mark.parametrize("name", sorted({**PLAIN_RECORDS, **{f"words-{k}": v for k, v in WORD_RECORDS.items()}}))
def test_json_holds_every_reference_field(tmp_path, name):
    record = {**PLAIN_RECORDS, **{f"words-{k}": v for k, v in WORD_RECORDS.items()}}[name]
    # the reference's transcribe numbers its segments (`id`), which its json writer dumps as they are
    numbered = {**record, "segments": [{"id": i, **s} for i, s in enumerate(record["segments"])]}
    ours, ref = _write_both(tmp_path, record, "json", numbered)
    ours, ref = json.loads(ours), json.loads(ref)
    for key, value in ref.items():
        assert ours[key] == value, key


def test_all_formats_at_once(tmp_path):
    record = WORD_RECORDS["awkward"]
    out = tmp_path / "all"
    out.mkdir()
    written = write_outputs(record, out, "clip", FORMATS, max_line_width=10, max_line_count=2)
    assert [p.name for p in written] == [f"clip.{f}" for f in FORMATS]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temp files left
    for fmt in TEXT_FORMATS:
        _, ref = _write_both(tmp_path, record, fmt, max_line_width=10, max_line_count=2)
        assert (out / f"clip.{fmt}").read_bytes() == ref, fmt


def test_unknown_format_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown output format"):
        write_outputs(PLAIN_RECORDS["typical"], tmp_path, "clip", ("txt", "docx"))
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        [path] = write_outputs(PLAIN_RECORDS["typical"], tmp_path, "clip", ("txt",))
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["clip.txt"]  # no temp file left behind


def test_format_timestamp_matches_reference():
    rng = random.Random(0)
    values = [0.0, 0.0004, 0.0005, 0.0015, 1.0049, 1.005, 2.675, 59.9994, 59.9995, 59.9999, 60.0, 3599.9994,
              3599.9995, 3600.0, 3661.001, 86399.9999, 360000.5]
    values += [rng.uniform(0, 10) for _ in range(500)] + [rng.uniform(0, 40000) for _ in range(500)]
    values += [round(rng.uniform(0, 100), 3) for _ in range(500)]
    for seconds in values:
        assert format_timestamp(seconds) == reference_timestamp(seconds), seconds
        assert format_timestamp(seconds, ",", True) == reference_timestamp(seconds, True, ","), seconds


@pytest.mark.parametrize("seconds", [-0.0004, -1.0, float("nan")])
def test_negative_timestamps_are_refused(seconds):
    with pytest.raises(ValueError, match="non-negative"):
        format_timestamp(seconds)
