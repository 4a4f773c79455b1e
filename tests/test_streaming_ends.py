"""The run's end at corpus scale (issue 25, memory flat in corpus size): `--formats parquet`
writes results.parquet a row group at a time from records read one line at a time, `eval`
scores each record as it is read and keeps none, the merge of per-process files copies them a
block at a time; and what they write has the values (and bytes) it had before. No model: a
stand-in producer makes the records."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest

from whisper_nnx.engine import records, results
from whisper_nnx.engine.entry import Entry
from whisper_nnx.engine.run import EXIT_INPUT_ERRORS, BulkRun


def _table_records() -> list:
    """Records of every shape: transcripts with segments and words, text holding line
    separators, errors of each kind, a dataset row."""
    out = []
    for i in range(10):
        segments = [{"start": float(s), "end": s + 0.5, "text": f" part {s} of {i}", "avg_logprob": -0.1 * s,
                     "words": [{"word": " part", "start": float(s), "end": s + 0.2, "probability": 0.9}]}
                    for s in range(i % 3)]
        out.append(records.transcript(f"clips/{i:02d}.flac", text=f"text {i}\u2028line\x85é", language="en",
                                      duration_s=1.0 + i, segments=segments, windows=1 + i % 2, tokens=[1, 2]))
    out.append(records.failure("bad.flac", "bad.flac: not audio", records.INPUT))
    out.append(records.failure("oom.flac", "oom.flac: out of memory", records.RUN, duration_s=3.0))
    out.append(records.duplicate("./clips/00.flac", 0))
    out.append(records.transcript("ds.parquet:4", text="row", language="de", duration_s=None, segments=[],
                                  windows=0, row="ds.parquet:4"))
    return out


def test_parquet_is_written_in_row_groups_and_holds_every_record(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    from whisper_nnx.engine import results_table

    written = _table_records()
    pulled, at_write = [0], []
    real_write = pq.ParquetWriter.write_table

    def counting_write(self, table, *args, **kwargs):  # how many records were read when each group is written
        at_write.append((pulled[0], table.num_rows))
        return real_write(self, table, *args, **kwargs)

    def one_at_a_time():
        for record in written:
            pulled[0] += 1
            yield record

    monkeypatch.setattr(pq.ParquetWriter, "write_table", counting_write)
    path = results_table.write_parquet(tmp_path, one_at_a_time(), max_records=4)
    assert at_write == [(4, 4), (8, 4), (12, 4), (14, 2)]  # each group written once its records were read
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    table = pq.read_table(path)
    assert table.schema == results_table.schema()
    assert table.equals(results_table.to_table(written))  # the table one write_table of them all gives
    assert [json.loads(r) for r in table.column("record").to_pylist()] == [records.as_dict(r) for r in written]
    assert table.column("path").to_pylist() == [r["path"] for r in written]
    assert table.column("text").to_pylist()[0] == "text 0\u2028line\x85é"
    assert table.column("error_kind").to_pylist()[10:13] == ["input", "run", "duplicate"]
    assert table.column("duration_s").to_pylist()[-3:] == [3.0, None, None]
    assert table.column("segments").to_pylist()[2] == [{"start": 0.0, "end": 0.5, "text": " part 0 of 2"},
                                                       {"start": 1.0, "end": 1.5, "text": " part 1 of 2"}]
    assert not (tmp_path / "results.parquet.tmp").exists()

    # A byte bound ends groups early: a group ends with the record that takes its JSON to 600 bytes
    path = results_table.write_parquet(tmp_path, written, max_records=100, max_bytes=600)
    sizes = [pq.ParquetFile(path).metadata.row_group(g).num_rows
             for g in range(pq.ParquetFile(path).metadata.num_row_groups)]
    expected, count, size = [], 0, 0
    for record in written:
        count, size = count + 1, size + len(results.record_json(record))
        if size >= 600:
            expected, count, size = expected + [count], 0, 0
    assert sizes == expected + ([count] if count else []) and len(sizes) > 2
    assert pq.read_table(path).equals(results_table.to_table(written))

    path = results_table.write_parquet(tmp_path, iter(()))  # no records: the schema, no rows
    assert pq.read_table(path).num_rows == 0 and pq.read_table(path).schema == results_table.schema()


class _Stand:
    """Records without a model: a transcript for each entry, an input error for names with "bad"."""

    def start(self, options) -> dict:
        return {"model": "stand-in"}

    def records(self, entries, options):
        for entry in entries:
            if "bad" in Path(entry.name).name:
                yield records.failure(entry.name, f"{entry.name}: not audio", records.INPUT)
            else:
                yield records.transcript(entry.name, text=f"words of {Path(entry.name).stem}\u2029", language="en",
                                         duration_s=2.5, segments=[{"start": 0.0, "end": 2.5, "text": "w"}],
                                         windows=1, tokens=[1])


def test_a_runs_end_reads_its_records_one_at_a_time_for_the_table_and_the_finish_hook(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    from whisper_nnx.engine import results_table

    names = []
    for name in ("a.wav", "bad.wav", "c.wav", "d.wav", "e.wav"):
        (tmp_path / name).write_bytes(b"stand-in")
        names.append(str(tmp_path / name))
    out = tmp_path / "out"
    seen = {}

    def finish(entries, written, folder, summary):
        seen["type"] = type(written)
        seen["first"] = [r["path"] for r in written]
        seen["second"] = [r["path"] for r in written]  # iterable again: read from the folder again
        return []

    def no_list(out):
        raise AssertionError("the run's end holds every record in a list")

    monkeypatch.setattr(results, "all_records", no_list)
    monkeypatch.setattr(results_table, "ROW_GROUP_RECORDS", 2)
    outcome = BulkRun(names, out, producer=_Stand(), formats=("txt", "parquet"), progress=False,
                      finish=finish).run()
    assert outcome.exit_code == EXIT_INPUT_ERRORS and outcome.summary["missing"] == 0
    on_disk = list(results.read_records(out / "results.jsonl"))
    assert [r["path"] for r in on_disk] == names
    assert seen["type"] is not list and seen["first"] == seen["second"] == names
    parquet = pq.ParquetFile(out / "results.parquet")
    assert parquet.metadata.num_row_groups == 3
    table = parquet.read()
    assert [json.loads(r) for r in table.column("record").to_pylist()] == on_disk
    assert table.column("error").to_pylist() == [None, f"{names[1]}: not audio", None, None, None]
    assert table.column("text").to_pylist()[0] == "words of a\u2029"


# --- eval: scored as read, nothing kept ----------------------------------------------------------

def _eval_case():
    """Entries and records whose word errors are counted by hand below."""
    entries = [Entry("a.flac", text="red green blue"), Entry("ça.flac", text="cat dog"),
               Entry("c.flac", text="sun moon"), Entry("d.flac", text="alpha beta gamma delta"),
               Entry("e.flac", text="left right"), Entry("./a.flac", text="red green blue"),
               Entry("f.flac"), Entry("g.flac", text="[noise]"), Entry("h.flac", text="up down")]

    def said(path, text, duration):
        return records.transcript(path, text=text, language="en", duration_s=duration, segments=[], windows=1)

    written = [said("a.flac", "red blue", 1.5), said("ça.flac", "cat cow", 2.0),
               records.failure("h.flac", "h.flac: out of memory", records.RUN),  # replaced by the later record
               said("c.flac", "sun moon star", 2.5), records.failure("d.flac", "d.flac: corrupt", records.INPUT),
               records.duplicate("./a.flac", 0), said("f.flac", "no reference", 1.0), said("g.flac", "x", 1.0),
               said("h.flac", "up down", 3.0)]
    return entries, written


# (path, words, substitutions, deletions, insertions, hits, duration_s, error), counted by hand
BY_HAND = [("a.flac", 3, 0, 1, 0, 2, 1.5, None), ("ça.flac", 2, 1, 0, 0, 1, 2.0, None),
           ("c.flac", 2, 0, 0, 1, 2, 2.5, None), ("d.flac", 4, 0, 4, 0, 0, None, "d.flac: corrupt"),
           ("e.flac", 2, 0, 2, 0, 0, None, "no record"), ("h.flac", 2, 0, 0, 0, 2, 3.0, None)]


# (reference characters, character errors) without whitespace, counted by hand: "redgreenblue" /
# "redblue" 5 deleted, "catdog" / "catcow" 2 substituted, "sunmoon" / "sunmoonstar" 4 inserted, the
# failures every character deleted
CHARS = {"a.flac": (12, 5), "ça.flac": (6, 2), "c.flac": (7, 4), "d.flac": (19, 19), "e.flac": (9, 9),
         "h.flac": (6, 0)}


def test_eval_totals_and_rows_equal_a_hand_count(tmp_path):
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    from whisper_nnx.engine import evaluation

    entries, written = _eval_case()
    scores = evaluation.score(entries, iter(written))
    rows = [{"path": p, "words": w, "substitutions": s, "deletions": d, "insertions": i, "hits": h,
             "wer": 100.0 * (s + d + i) / w, "chars": CHARS[p][0], "char_errors": CHARS[p][1],
             "cer": 100.0 * CHARS[p][1] / CHARS[p][0], "duration_s": t, "error": e}
            for p, w, s, d, i, h, t, e in BY_HAND]
    assert list(scores["per_input"]) == rows and list(scores["per_input"]) == rows  # made again on each pass
    assert scores["per_input"] == rows and len(scores["per_input"]) == 6
    assert {k: v for k, v in scores.items() if k != "per_input"} == {
        "wer": 100.0 * 9 / 15, "words": 15, "substitutions": 1, "deletions": 7, "insertions": 1, "hits": 7,
        "cer": 100.0 * 39 / 59, "chars": 59, "char_errors": 39,
        "inputs": 6, "inputs_without_reference": 2, "failed": ["d.flac", "e.flac"], "audio_s": 9.0}

    result = evaluation.report(scores, {"wall_s": 4.5, "audio_hours": 9.0 / 3600, "skipped_already_done": 0},
                               {"model": "stand-in", "inputs": ["é/list.txt"]})
    table = evaluation.write(tmp_path, result)
    # eval.json: the bytes one json.dumps of the whole result gives (as before: rows written one at a time now)
    whole = {**result, "per_input": rows}
    assert (tmp_path / "eval.json").read_text(encoding="utf-8") == json.dumps(whole, indent=2,
                                                                               ensure_ascii=False) + "\n"
    assert json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))["per_input"] == rows
    md = (tmp_path / "eval.md").read_text(encoding="utf-8").split("\n")
    assert md[2] == "| 60.00 | 66.10 | 15 | 1 | 7 | 1 | 6 | 2 | 2 | 9.0 | 4.5 | 2.0 |" and table == "\n".join(md[:3])
    assert md[6:] == ["| a.flac | 3 | 0 | 1 | 0 | 33.33 | 41.67 |  |", "| ça.flac | 2 | 1 | 0 | 0 | 50.00 | 33.33 |  |",
                      "| c.flac | 2 | 0 | 0 | 1 | 50.00 | 57.14 |  |",
                      "| d.flac | 4 | 0 | 4 | 0 | 100.00 | 100.00 | d.flac: corrupt |",
                      "| e.flac | 2 | 0 | 2 | 0 | 100.00 | 100.00 | no record |",
                      "| h.flac | 2 | 0 | 0 | 0 | 0.00 | 0.00 |  |", ""]
    assert not list(tmp_path.glob(".*.tmp"))


def test_eval_with_no_scored_input_writes_what_it_wrote_before(tmp_path):
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    from whisper_nnx.engine import evaluation

    scores = evaluation.score([Entry("f.flac")], [records.transcript("f.flac", text="x", language="en",
                                                                     duration_s=1.0, segments=[], windows=1)])
    assert scores["wer"] is None and list(scores["per_input"]) == [] and scores["audio_s"] == 0
    result = evaluation.report(scores, {"wall_s": 0.0}, {})
    evaluation.write(tmp_path, result)
    assert (tmp_path / "eval.json").read_text() == json.dumps({**result, "per_input": []}, indent=2) + "\n"


class _Record(dict):
    """A record that can be watched (weakref) to see whether anything still holds it."""


def test_eval_keeps_no_record_while_it_reads_them():
    pytest.importorskip("jiwer")
    pytest.importorskip("whisper_normalizer")
    from whisper_nnx.engine import evaluation

    n = 50
    entries = [Entry(f"{i}.flac", text="one small step for a man") for i in range(n)]
    refs: list = []
    alive_before: list[int] = []

    def stream():
        for i in range(n):
            # everything handed out before the previous record must be gone by now
            alive_before.append(sum(ref() is not None for ref in refs[:-1]))
            record = _Record(records.as_dict(records.transcript(
                f"{i}.flac", text="one small step" + " for a man" * (i % 2), language="en", duration_s=1.0,
                segments=[{"start": 0.0, "end": 1.0, "text": "x" * 1000}], windows=1)))
            refs.append(weakref.ref(record))
            yield record

    scores = evaluation.score(entries, stream())
    assert alive_before == [0] * n
    assert scores["words"] == 6 * n and scores["deletions"] == 3 * (n // 2) and scores["inputs"] == n


# --- merge of per-process files: the same bytes, a block at a time ------------------------------

def test_merge_appends_the_process_files_byte_for_byte(tmp_path):
    old = '{"path": "old.wav", "text": "raw \u2028 in an old record"}\n'.encode()
    parts = [b"".join(results.record_line(records.transcript(f"p{p}-{i}.wav", text=f"t\u00e9{i}", language="en",
                                                             duration_s=1.0, segments=[], windows=1)).encode()
                      for i in range(3)) for p in range(3)]
    (tmp_path / "results.jsonl").write_bytes(old)
    for p, body in enumerate(parts):
        (tmp_path / results.process_file(p)).write_bytes(body)
    results.merge_process_results(tmp_path)
    assert (tmp_path / "results.jsonl").read_bytes() == old + b"".join(parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
    paths = [r["path"] for r in results.read_records(tmp_path / "results.jsonl")]
    assert paths == ["old.wav", *[f"p{p}-{i}.wav" for p in range(3) for i in range(3)]]
