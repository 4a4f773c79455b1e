"""Per-format output names (issue 25, H1): `stem.<format>` as openai-whisper and WhisperX write
them, the input's identity where the stem lacks it (dataset row, WebDataset key, NeMo span), a
collision resolved by what is already claimed (`stem~2`), never a file of another record written
over, and each record listing its files (relative to the output folder)."""

from __future__ import annotations

import json

import pytest

from whisper_nnx.engine import records
from whisper_nnx.engine.sink import ResultSink


def _transcript(path: str, text: str) -> records.Transcript:
    segments = [{"start": 0.0, "end": 1.0, "text": " " + text, "avg_logprob": -0.2, "compression_ratio": 1.1,
                 "no_speech_prob": 0.01, "temperature": 0.0}]
    return records.transcript(path, text=text, language="en", duration_s=1.0, segments=segments, windows=1)


def _lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_equal_stems_in_a_flat_folder_never_overwrite_each_other(tmp_path):
    with ResultSink(tmp_path, ("txt", "json"), output_layout="flat") as sink:
        sink.write(_transcript("c/10595/audio.flac", "first clip"))
        sink.write(_transcript("c/131627/audio.flac", "second clip"))
        sink.write(records.failure("c/9/audio.flac", "c/9/audio.flac: not found", records.INPUT))
    lines = _lines(tmp_path)
    assert [r["files"] for r in lines] == [["audio.txt", "audio.json"], ["audio~2.txt", "audio~2.json"], []]
    assert (tmp_path / "audio.txt").read_text() == "first clip\n"
    assert (tmp_path / "audio~2.txt").read_text() == "second clip\n"
    assert json.loads((tmp_path / "audio~2.json").read_text())["path"] == "c/131627/audio.flac"


def test_tree_layout_mirrors_the_input_folders(tmp_path):
    out = tmp_path / "out"
    with ResultSink(out, ("srt",), output_layout="tree") as sink:
        sink.write(_transcript("a/movie.mp4", "one"))
        sink.write(_transcript("b/movie.mp4", "two"))
    assert [r["files"] for r in _lines(out)] == [["a/movie.srt"], ["b/movie.srt"]]
    assert "two" in (out / "b" / "movie.srt").read_text()


def test_tree_names_are_relative_to_an_input_folder(tmp_path):
    out = tmp_path / "out"
    with ResultSink(out, ("txt",), output_layout="tree", roots=["/data/corpus/", "s3://bucket/audio"]) as sink:
        sink.write(_transcript("/data/corpus/a/talk.wav", "one"))
        sink.write(_transcript("s3://bucket/audio/x/y.flac", "two"))
        sink.write(_transcript("/elsewhere/z.wav", "three"))
        sink.write(_transcript("../up/w.wav", "four"))
    assert [r["files"] for r in _lines(out)] == [["a/talk.txt"], ["x/y.txt"], ["z.txt"], ["up/w.txt"]]


@pytest.mark.parametrize("name, flat, tree", [
    ("data/train.parquet:17", "train-17.txt", "data/train-17.txt"),
    ("shards/shard-000.tar:sample/17", "shard-000-sample_17.txt", "shards/shard-000-sample_17.txt"),
    ("talks/long.wav#t=1234.561,1236.561", "long-1234.561-1236.561.txt", "talks/long-1234.561-1236.561.txt"),
    ("talk.final.wav", "talk.final.txt", "talk.final.txt"),
])
def test_names_carry_the_inputs_identity(tmp_path, name, flat, tree):
    for layout, want in (("flat", flat), ("tree", tree)):
        out = tmp_path / layout
        with ResultSink(out, ("txt",), output_layout=layout) as sink:
            sink.write(_transcript(name, "x"))
        assert _lines(out)[0]["files"] == [want]
        assert (out / want).read_text() == "x\n"


def test_rows_of_one_dataset_file_get_one_file_each(tmp_path):
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:
        for row in range(3):
            sink.write(_transcript(f"train.parquet:{row}", f"row {row}"))
        sink.write(_transcript("other/train.parquet:0", "other file's row 0"))
    assert [r["files"] for r in _lines(tmp_path)] == [["train-0.txt"], ["train-1.txt"], ["train-2.txt"],
                                                     ["train-0~2.txt"]]
    assert (tmp_path / "train-0.txt").read_text() == "row 0\n"


def test_a_resumed_run_keeps_the_names_of_earlier_records(tmp_path):
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:
        sink.write(_transcript("c/1/audio.flac", "first"))
        sink.write(_transcript("c/2/audio.flac", "second"))
    (tmp_path / "audio.txt").unlink()  # even when its file is gone, the name stays the record's
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:
        sink.write(_transcript("c/3/audio.flac", "third"))
    assert [r["files"] for r in _lines(tmp_path)] == [["audio.txt"], ["audio~2.txt"], ["audio~3.txt"]]
    assert (tmp_path / "audio~2.txt").read_text() == "second\n"
    assert not (tmp_path / "audio.txt").exists()


def test_a_file_no_record_lists_is_not_written_over(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's own notes\n")
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:
        sink.write(_transcript("notes.wav", "speech"))
    assert (tmp_path / "notes.txt").read_text() == "the user's own notes\n"
    assert _lines(tmp_path)[0]["files"] == ["notes~2.txt"]


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="output layout"):
        ResultSink(tmp_path, ("txt",), output_layout="nested")


def test_rows_sharing_an_id_get_files_of_their_own(tmp_path):
    """--id-column names are not identities: two rows named "7" (by their id) are two records,
    each with its own files, kept apart again on resume."""
    first, second = (records.transcript("7", text=text, language="en", duration_s=1.0, windows=1, row=row,
                                        segments=_transcript("7", text)["segments"])
                     for text, row in (("from train", "train.parquet:7"), ("from test", "test.parquet:7")))
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:
        sink.write(first)
        sink.write(second)
    assert [r["files"] for r in _lines(tmp_path)] == [["7.txt"], ["7~2.txt"]]
    assert (tmp_path / "7.txt").read_text() == "from train\n"
    assert (tmp_path / "7~2.txt").read_text() == "from test\n"
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:  # resumed: the names stay theirs
        assert sink.names.claim("7", ("txt",), owner="test.parquet:7") == "7~2"
