"""`whisper-nnx eval` scoring and `--formats parquet`, without the model: word errors against
jiwer on the same normalized pairs, Whisper's normalizers, the Parquet table of records."""

from __future__ import annotations

import json

import pytest

jiwer = pytest.importorskip("jiwer")
pytest.importorskip("whisper_normalizer")

from whisper_normalizer.basic import BasicTextNormalizer  # noqa: E402
from whisper_normalizer.english import EnglishTextNormalizer  # noqa: E402

from whisper_nnx.engine import evaluation  # noqa: E402
from whisper_nnx.engine.inputs import Entry  # noqa: E402
from whisper_nnx.engine.records import duplicate, failure, transcript  # noqa: E402

SAMPLES = ["Mr. Smith paid $20.50 for 3 apples, didn't he?", "The colour of the theatre — it's twenty-one!",
           "Hmm, um, I saw 1,000,000 people in 1999 and the 2nd of May", 'Dr. Jones said: "okay" [laughs] (inaudible)',
           "It's 5 percent; 10th place; one hundred and twenty three", "Ich möchte ein Café, bitte! Größe: 3½"]


def test_normalizers_equal_openai_whispers():
    reference = pytest.importorskip("whisper.normalizers")
    ours_en, theirs_en = EnglishTextNormalizer(), reference.EnglishTextNormalizer()
    ours_basic, theirs_basic = BasicTextNormalizer(), reference.BasicTextNormalizer()
    for text in SAMPLES:
        assert ours_en(text) == theirs_en(text)
        assert ours_basic(text) == theirs_basic(text)


def _record(path, text, language="en", duration=2.0):
    return transcript(path, text=text, language=language, duration_s=duration, segments=[], windows=1)


def test_score_equals_jiwer_on_the_same_pairs():
    refs = ["Did you remember to feed the cat before you left?", "How many apples did Sarah buy at the market?",
            "Mr. Brown read twenty-one books."]
    hyps = ["did you remember to feed a cat before you left", "How many apples did they remind us of the market?",
            "Mister Brown read 21 books and then some"]
    entries = [Entry(f"{i}.flac", text=r) for i, r in enumerate(refs)]
    records = [_record(f"{i}.flac", h) for i, h in enumerate(hyps)]
    result = evaluation.score(entries, records)
    norm = EnglishTextNormalizer()
    expected = jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])
    assert result["wer"] == pytest.approx(100 * expected, abs=1e-9)
    assert result["words"] == sum(len(norm(r).split()) for r in refs) and result["inputs"] == 3
    out = jiwer.process_words([norm(r) for r in refs], [norm(h) for h in hyps])
    assert (result["substitutions"], result["deletions"], result["insertions"]) == \
        (out.substitutions, out.deletions, out.insertions)
    assert result["audio_s"] == pytest.approx(6.0)
    # The benchmarks' WER (a fraction) is the same corpus rate, and jiwer's on one pair.
    assert evaluation.wer(refs, hyps) == pytest.approx(expected, abs=1e-12)
    assert evaluation.wer(refs[2], hyps[2]) == pytest.approx(jiwer.wer(norm(refs[2]), norm(hyps[2])), abs=1e-12)
    basic = BasicTextNormalizer()
    assert evaluation.wer(SAMPLES[5], "ich möchte ein cafe bitte", language="de") == \
        pytest.approx(jiwer.wer(basic(SAMPLES[5]), basic("ich möchte ein cafe bitte")), abs=1e-12)


def test_failures_count_as_deleted_words_and_duplicates_once():
    entries = [Entry("a.flac", text="red green blue"), Entry("b.flac", text="cat dog"),
               Entry("./a.flac", text="red green blue"), Entry("c.flac"), Entry("d.flac", text="[noise] (laughs)")]
    records = [_record("a.flac", "red green blue"), failure("b.flac", "b.flac: corrupt", "input"),
               duplicate("./a.flac", 0), _record("c.flac", "no reference"), _record("d.flac", "x")]
    result = evaluation.score(entries, records)
    assert result["words"] == 5 and result["deletions"] == 2 and result["wer"] == pytest.approx(40.0)
    assert result["failed"] == ["b.flac"] and result["inputs"] == 2 and result["inputs_without_reference"] == 2


def test_other_languages_use_the_basic_normalizer():
    entries = [Entry("de.flac", text="Ich möchte ein Café, bitte!")]
    result = evaluation.score(entries, [_record("de.flac", "ich möchte ein cafe bitte", language="de")])
    basic = BasicTextNormalizer()
    assert result["wer"] == pytest.approx(100 * jiwer.wer(basic("Ich möchte ein Café, bitte!"),
                                                          basic("ich möchte ein cafe bitte")))


def test_report_and_markdown(tmp_path):
    scores = evaluation.score([Entry("a.flac", text="red green")], [_record("a.flac", "red", duration=30.0)])
    result = evaluation.report(scores, {"wall_s": 10.0, "audio_hours": 30.0 / 3600, "skipped_already_done": 0},
                               {"model": "tiny.en"})
    assert result["wer"] == pytest.approx(50.0) and result["rtfx"] == pytest.approx(3.0)
    table = evaluation.write(tmp_path, result)
    saved = json.loads((tmp_path / "eval.json").read_text())
    for key in ("wer", "words", "inputs", "audio_s", "wall_s", "rtfx"):
        assert key in saved
    assert "| 50.00 | 62.50 | 2 | 0 | 1 | 0 | 1 |" in table  # CER: "redgreen" against "red", 5 of 8 deleted
    assert "| a.flac | 2 | 0 | 1 | 0 | 50.00 |" in (tmp_path / "eval.md").read_text()


def test_parquet_table_keeps_every_record(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from whisper_nnx.engine.results_table import write_parquet

    records = [transcript("a.flac", text=" hi there", language="en", duration_s=1.5, windows=1,
                          segments=[{"start": 0.0, "end": 1.5, "text": " hi there", "avg_logprob": -0.2,
                                     "words": [{"word": " hi", "start": 0.0, "end": 0.4, "probability": 0.9}]}]),
               failure("b.flac", "b.flac: not audio", "input")]
    path = write_parquet(tmp_path, records)
    table = pq.read_table(path)
    assert table.column("path").to_pylist() == ["a.flac", "b.flac"]
    assert table.column("error_kind").to_pylist() == [None, "input"]
    assert table.column("segments").to_pylist()[0] == [{"start": 0.0, "end": 1.5, "text": " hi there"}]
    assert [json.loads(r) for r in table.column("record").to_pylist()] == records
    assert not (tmp_path / "results.parquet.tmp").exists()
