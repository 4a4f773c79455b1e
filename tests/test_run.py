"""`BulkRun` from Python: a real run with tiny.en, the record's tokens kept off what is written,
and the run's lifecycle (duplicates, resume, the one repair, the bucket mirror) with a stand-in
producer so that no model is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whisper_nnx.engine import records, results
from whisper_nnx.engine import sink as sink_module
from whisper_nnx.engine.remote_output import BucketSink
from whisper_nnx.engine.run import EXIT_INPUT_ERRORS, EXIT_OK, BulkRun, UsageError
from whisper_nnx.engine.sink import ResultSink


def _words(text: str) -> list[str]:
    return "".join(c.lower() for c in text if c.isalnum() or c.isspace()).split()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_bulk_run_from_python_writes_one_checked_record_per_entry(tiny, tmp_path, data_dir, transcripts):
    joe = str(data_dir / "sample_joe.flac")
    missing = str(tmp_path / "missing.flac")
    out = tmp_path / "out"
    outcome = BulkRun([joe, missing, joe], out, formats=("json", "txt"), model=tiny, progress=False).run()
    assert outcome.exit_code == EXIT_INPUT_ERRORS and outcome.lead and outcome.results == out / "results.jsonl"
    lines = _lines(out / "results.jsonl")
    by_kind = {r["error_kind"]: r for r in lines}
    assert len(lines) == 3 and sorted(by_kind, key=str) == sorted([None, "input", "duplicate"], key=str)
    good = by_kind[None]
    assert good["path"] == joe and good["language"] == "en" and good["model"] == "tiny.en"
    assert _words(good["text"]) == _words(transcripts["sample_joe.flac"])
    assert abs(good["duration_s"] - 4.11) < 0.01 and good["windows"] == 1
    assert good["segments"][0]["start"] == 0.0 and 3.0 < good["segments"][-1]["end"] <= 4.2
    assert "tokens" not in good
    assert by_kind["input"]["path"] == missing and "not found" in by_kind["input"]["error"]
    assert by_kind["duplicate"]["duplicate_of"] == 1
    assert lines.index(by_kind["duplicate"]) > lines.index(good)  # written after the record it repeats
    assert good["files"] == ["sample_joe.json", "sample_joe.txt"]  # a file given directly: OUT/stem.ext
    assert _words((out / "sample_joe.txt").read_text()) == _words(good["text"])
    summary = json.loads((out / "summary.json").read_text())
    assert outcome.summary == summary and summary["files"] == 3 and summary["errors"] == 2
    with pytest.raises(UsageError, match="--resume"):  # old results are never overwritten
        BulkRun([joe], out, model=tiny, progress=False).run()


@pytest.mark.slow
def test_the_written_record_has_no_tokens_while_the_transcript_has_them(tiny, tmp_path, data_dir):
    [transcript] = tiny.transcribe([str(data_dir / "sample_joe.flac")])
    assert isinstance(transcript, records.Transcript)
    tokens = transcript["tokens"]
    assert tokens == transcript.tokens and len(tokens) > 5 and all(isinstance(t, int) for t in tokens)
    text_tokens = [t for t in tokens if t < tiny.tokenizer.eot]  # the rest are timestamps
    assert _words(tiny.tokenizer.decode(text_tokens)) == _words(transcript["text"])
    with ResultSink(tmp_path, ("json",)) as sink:
        written = sink.write(transcript)
    [line] = _lines(tmp_path / "results.jsonl")
    [name] = line.pop("files")  # what the sink adds: the files it wrote for the record
    assert Path(name).name == "sample_joe.json" and written["files"] == [name]
    assert "tokens" not in line and line == transcript.to_record()
    # a Transcript's segments carry their tokens (as the reference's), its json file too; the line has none
    assert {k: v for k, v in transcript.items() if k not in ("tokens", "segments")} == \
        {k: v for k, v in line.items() if k != "segments"}
    assert [{k: v for k, v in s.items() if k != "tokens"} for s in transcript["segments"]] == line["segments"]
    assert [s["tokens"] for s in json.loads((tmp_path / name).read_text())["segments"]] == \
        [s["tokens"] for s in transcript["segments"]]
    assert json.loads((tmp_path / name).read_text())["text"] == transcript["text"]
    assert "tokens" not in json.loads((tmp_path / name).read_text())


class _Stand:
    """A record producer without a model: each entry's text is its file name."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.asked: list[str] = []
        self.fail = fail

    def start(self, options) -> dict:
        return {"model": "stand-in"}

    def records(self, entries, options):
        for entry in entries:
            self.asked.append(Path(entry.name).name)
            if Path(entry.name).name in self.fail:
                yield records.failure(entry.name, f"{entry.name}: out of memory", records.RUN)
                continue
            yield records.transcript(entry.name, text=Path(entry.name).stem, language="en", duration_s=2.0,
                                     segments=[{"start": 0.0, "end": 2.0, "text": Path(entry.name).stem}],
                                     windows=1, tokens=[7, 8, 9])


@pytest.fixture()
def audio_files(tmp_path) -> list[str]:
    names = []
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(b"stand-in")
        names.append(str(tmp_path / name))
    return names


def test_a_resumed_run_redoes_run_errors_and_repairs_a_torn_line_once(tmp_path, audio_files, monkeypatch):
    a, b, c = audio_files
    out = tmp_path / "out"
    first = _Stand(fail=("b.wav",))
    outcome = BulkRun([a, b, a, c], out, producer=first, formats=("txt",), progress=False).run()
    assert outcome.exit_code == EXIT_INPUT_ERRORS and first.asked == ["a.wav", "b.wav", "c.wav"]
    lines = _lines(out / "results.jsonl")
    # a repeat is written when the plan reaches it, after the record it repeats
    assert [(Path(r["path"]).name, r["error_kind"]) for r in lines] == [
        ("a.wav", None), ("b.wav", "run"), ("a.wav", "duplicate"), ("c.wav", None)]
    assert all(r["model"] == "stand-in" and "tokens" not in r for r in lines)
    # a kill cut c's line short: it is repaired once (by the run, not again by its sink), then redone
    text = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(text[:-20])
    repairs = []
    real_repair = results.repair
    counted = lambda path: repairs.append(path.name) or real_repair(path)  # noqa: E731
    monkeypatch.setattr(results, "repair", counted)
    monkeypatch.setattr(sink_module, "repair", counted)
    again = _Stand()
    outcome = BulkRun([a, b, a, c], out, producer=again, formats=("txt",), resume=True, progress=False).run()
    assert outcome.exit_code == EXIT_OK and again.asked == ["b.wav", "c.wav"]
    assert repairs == ["results.jsonl"]
    lines = _lines(out / "results.jsonl")
    assert sorted((Path(r["path"]).name, str(r["error_kind"])) for r in lines) == [
        ("a.wav", "None"), ("a.wav", "duplicate"), ("b.wav", "None"), ("c.wav", "None")]
    assert outcome.summary["skipped_already_done"] == 2 and outcome.summary["files"] == 2


def test_a_url_output_dir_is_mirrored_with_the_run_files(tmp_path, audio_files):
    a, b, _ = audio_files
    url = f"memory://whisper-nnx-tests/{tmp_path.name}/run"
    seen = []

    def finish(entries, written, out, summary):
        seen.append((len(entries), len(written)))
        (out / "scores.json").write_text("{}\n")
        return ["scores.json"]

    outcome = BulkRun([a, b], url, producer=_Stand(), formats=("json",), staging_dir=str(tmp_path / "staging"),
                      upload_every_s=0.0, progress=False, finish=finish).run()
    assert outcome.exit_code == EXIT_OK and seen == [(2, 2)]
    bucket = BucketSink(url, tmp_path / "other")
    remote = [json.loads(line) for line in bucket.remote_lines()]
    listed = [name for r in remote for name in r["files"]]  # each record's files, relative to the output
    assert len(listed) == 2 and all(name.endswith(".json") for name in listed)
    names = sorted(p[len(bucket.root) + 1:] for p in bucket.fs.find(bucket.root))
    assert names == sorted(["results.jsonl", "summary.json", "scores.json", *listed])
    assert sorted(r["text"] for r in remote) == ["a", "b"] and all("tokens" not in r for r in remote)
    with pytest.raises(UsageError, match="--resume"):
        BulkRun([a], url, producer=_Stand(), staging_dir=str(tmp_path / "staging"), progress=False).run()


def test_the_bucket_sink_keeps_the_results_file_rules(tmp_path):
    url = f"memory://whisper-nnx-tests/{tmp_path.name}/sink"
    sink = BucketSink(url, tmp_path / "staging", formats=("txt",), upload_every_s=3600)
    done = records.transcript("a.wav", text="a", language="en", duration_s=1.0, segments=[], windows=1,
                              tokens=[1])
    sink.fs.pipe_file(f"{sink.root}/results.jsonl", (results.record_line(done) + "not a record\n").encode())
    sink.fs.pipe_file(f"{sink.root}/parts/x-000001.jsonl", results.record_line(done).encode())  # the same line
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "results.process-00001.jsonl").write_text("stale\n")
    with sink:
        assert _lines(tmp_path / "staging" / "results.jsonl") == [records.as_dict(done)]
        assert not results.process_files(tmp_path / "staging")
        sink.write(records.failure("b.wav", "b.wav: bad", records.INPUT))
        assert not sink.fs.exists(f"{sink.root}/parts/{sink.run_id}-000001.jsonl")  # not yet due
    merged = sink.fs.cat_file(f"{sink.root}/results.jsonl").decode()
    # finish: the bucket's records and this run's (b, uploaded as a part at the end) merged; parts removed
    assert merged == results.record_line(done) + results.record_line(records.failure("b.wav", "b.wav: bad",
                                                                                     records.INPUT))
    assert not sink.fs.exists(f"{sink.root}/parts") or not sink.fs.find(f"{sink.root}/parts")
