"""`whisper-nnx eval`: the character error rate against a hand count, the fast reading of an
output folder's records (pyarrow, only the scored fields) against reading them line by line,
and `eval --score-only` (an existing folder scored without transcribing)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jiwer")
pytest.importorskip("whisper_normalizer")

from whisper_nnx.engine import cli, evaluation, records, results  # noqa: E402
from whisper_nnx.engine.inputs import Entry  # noqa: E402


def _said(path, text, language="en", duration=2.0, **extra):
    return records.transcript(path, text=text, language=language, duration_s=duration, segments=[], windows=1,
                              **extra)


def test_cer_equals_a_hand_count(tmp_path):
    # normalized, whitespace removed:
    #   a: "redgreen" (8) against "redgrin": e -> i, e deleted: 2 errors (WER: 1 of 2 words)
    #   b: "猫が好き" (4) against "猫は好き": 1 substitution (WER: the one "word" wrong, 100 %)
    #   c: "sunmoon" (7), no record: 7 deleted
    entries = [Entry("a.flac", text="Red, green!"), Entry("b.flac", text="猫が好き"), Entry("c.flac", text="sun moon")]
    written = [_said("a.flac", "red grin"), _said("b.flac", "猫は好き", language="ja")]
    scores = evaluation.score(entries, written)
    rows = list(scores["per_input"])
    assert [(r["path"], r["chars"], r["char_errors"]) for r in rows] == [("a.flac", 8, 2), ("b.flac", 4, 1),
                                                                        ("c.flac", 7, 7)]
    assert [r["cer"] for r in rows] == [25.0, 25.0, 100.0]
    assert [r["wer"] for r in rows] == [50.0, 100.0, 100.0]
    assert (scores["chars"], scores["char_errors"]) == (19, 10)
    assert scores["cer"] == pytest.approx(100.0 * 10 / 19)

    result = evaluation.report(scores, {"wall_s": 2.0, "audio_hours": 4.0 / 3600}, {})
    assert result["cer"] == round(100.0 * 10 / 19, 4)
    table = evaluation.write(tmp_path, result)
    assert table.split("\n")[0].startswith("| WER % | CER % | words |")
    assert table.split("\n")[2] == "| 80.00 | 52.63 | 5 | 2 | 2 | 0 | 3 | 1 | 0 | 4.0 | 2.0 | 2.0 |"
    md = (tmp_path / "eval.md").read_text(encoding="utf-8").split("\n")
    assert md[6:9] == ["| a.flac | 2 | 1 | 0 | 0 | 50.00 | 25.00 |  |", "| b.flac | 1 | 1 | 0 | 0 | 100.00 | 25.00 |  |",
                       "| c.flac | 2 | 0 | 2 | 0 | 100.00 | 100.00 | no record |"]
    saved = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert (saved["cer"], saved["chars"], saved["char_errors"]) == (round(100.0 * 10 / 19, 4), 19, 10)
    assert [r["cer"] for r in saved["per_input"]] == [25.0, 25.0, 100.0]


def _folder_case(tmp_path):
    """An output folder (results.jsonl and a process file) and its entries: a run error redone
    later, a duplicate, a dataset row named by its id, text holding U+2028, an input error."""
    out = tmp_path / "out"
    out.mkdir()
    entries = [Entry("a.flac", text="red green blue"), Entry("b.flac", text="cat dog"),
               Entry("./a.flac", text="red green blue"), Entry("d.flac", text="red fox\u2028jumps"),
               Entry("e.flac", text="left right"), Entry("rows.parquet:3", text="up down"), Entry("n.flac")]
    first = [_said("a.flac", "red blue", duration=1.25), records.failure("b.flac", "b.flac: oom", records.RUN),
             records.duplicate("./a.flac", 0), _said("d.flac", "red fox\u2028jumps", duration=3.5)]
    second = [_said("b.flac", "cat dog", duration=2.5), records.failure("e.flac", "e.flac: corrupt", records.INPUT),
              _said("id-7", "up town", duration=1.0, row="rows.parquet:3"), _said("n.flac", "no reference")]
    (out / results.RESULTS).write_text("".join(results.record_line(r) for r in first), encoding="utf-8")
    (out / results.process_file(1)).write_text("".join(results.record_line(r) for r in second), encoding="utf-8")
    return entries, out


def _plain(scores):
    return {**scores, "per_input": list(scores["per_input"])}


def test_folder_records_read_by_pyarrow_score_as_read_line_by_line(tmp_path):
    pytest.importorskip("pyarrow.json")
    entries, out = _folder_case(tmp_path)
    fields = list(evaluation._record_fields(results.RecordsOf(out)))  # the fast reader takes this folder
    assert [f["path"] for f in fields] == ["a.flac", "b.flac", "./a.flac", "d.flac", "b.flac", "e.flac", "id-7",
                                           "n.flac"]
    assert fields[6] == {"path": "id-7", "row": "rows.parquet:3", "text": "up town", "language": "en",
                         "duration_s": 1.0, "error": None, "error_kind": None}
    fast = _plain(evaluation.score(entries, results.RecordsOf(out)))
    slow = _plain(evaluation.score(entries, list(results.iter_records(out))))
    assert fast == slow
    assert (fast["words"], fast["deletions"], fast["substitutions"], fast["inputs"]) == (12, 3, 1, 5)
    assert fast["failed"] == ["e.flac"] and fast["audio_s"] == 8.25


def test_a_line_pyarrow_cannot_read_falls_back_to_the_same_scores(tmp_path):
    pytest.importorskip("pyarrow.json")
    entries, out = _folder_case(tmp_path)
    # a field of another type than pyarrow is told (json.loads takes it): the lines are read again one by one
    with open(out / results.process_file(1), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**_said("e.flac", "left right", duration=2.0), "language": 5}) + "\n")
    with pytest.raises(evaluation._Unreadable):
        list(evaluation._record_fields(results.RecordsOf(out)))
    fast = _plain(evaluation.score(entries, results.RecordsOf(out)))
    slow = _plain(evaluation.score(entries, list(results.iter_records(out))))
    assert {k: v for k, v in fast.items() if k != "per_input"} == {k: v for k, v in slow.items() if k != "per_input"}
    assert [r["path"] for r in fast["per_input"]] == [r["path"] for r in slow["per_input"]]
    # e.flac's transcript, read after its input error, counts
    assert fast["failed"] == [] and (fast["words"], fast["deletions"], fast["audio_s"]) == (12, 1, 10.25)
    assert fast["per_input"][3] == {**slow["per_input"][3], "path": "e.flac", "words": 2, "wer": 0.0}


def _manifest(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in [
        {"path": "a.flac", "text": "red green"}, {"path": "b.flac", "text": "cat dog"}, {"path": "c.flac"}]))
    return manifest


def test_score_only_scores_an_existing_folder_without_a_model(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    written = [_said("a.flac", "red grin", duration=2.0), _said("b.flac", "cat dog", duration=3.0),
               _said("c.flac", "no reference", duration=1.0)]
    lines = "".join(results.record_line(r) for r in written)
    (out / results.RESULTS).write_text(lines, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"wall_s": 2.5, "audio_hours": 6.0 / 3600}))
    # a model that does not exist: scoring never loads one
    code = cli.main(["eval", str(_manifest(tmp_path)), "--output-dir", str(out), "--score-only",
                     "--model", "no-such-model", "--no-progress"])
    assert code == cli.EXIT_OK
    saved = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert (saved["wer"], saved["words"], saved["substitutions"], saved["inputs"]) == (25.0, 4, 1, 2)
    assert (saved["cer"], saved["chars"], saved["char_errors"]) == (round(100.0 * 2 / 14, 4), 14, 2)
    assert (saved["wall_s"], saved["rtfx"], saved["audio_s"]) == (2.5, 2.4, 5.0)
    assert saved["settings"]["score_only"] is True and saved["inputs_without_reference"] == 1
    assert "| 25.00 | 14.29 | 4 | 1 | 0 | 0 | 2 | 0 | 1 | 5.0 | 2.5 | 2.4 |" in capsys.readouterr().out
    assert (out / results.RESULTS).read_text(encoding="utf-8") == lines  # the records are left as they were
    assert sorted(p.name for p in out.iterdir()) == sorted([".whisper-nnx.lock", "eval.json", "eval.md",
                                                            "results.jsonl", "summary.json"])


def test_score_only_refuses_an_empty_folder_and_a_running_one(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    args = ["eval", str(_manifest(tmp_path)), "--output-dir", str(out), "--score-only", "--no-progress"]
    assert cli.main(args) == cli.EXIT_USAGE
    assert "holds no records to score" in capsys.readouterr().err
    (out / results.RESULTS).write_text(results.record_line(_said("a.flac", "red green")), encoding="utf-8")
    with results.RunLock(out):  # a run still writing there
        assert cli.main(args) == cli.EXIT_USAGE
    assert "in use by another whisper-nnx run" in capsys.readouterr().err
    assert not (out / "eval.json").exists()


def test_score_only_is_in_evals_help():
    helps = [action for action in cli.build_parser()._subparsers._group_actions[0].choices["eval"]._actions
             if "--score-only" in action.option_strings]
    assert len(helps) == 1 and "without transcribing" in helps[0].help and "no model" in helps[0].help
