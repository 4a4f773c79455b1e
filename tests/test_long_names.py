"""Names over the file system's limit (255 bytes a component): the temp file of an atomic write and every output
name stay within it, so a long input name is transcribed, not a run error retried by every resume."""

from __future__ import annotations

import json
import os

from whisper_nnx.engine import records
from whisper_nnx.engine.files import atomic_write_text
from whisper_nnx.engine.sink import ResultSink

LIMIT = 255


def _transcript(path: str) -> records.Transcript:
    return records.transcript(path, text="Hello.", language="en", duration_s=1.0,
                              segments=[{"start": 0.0, "end": 1.0, "text": " Hello."}], windows=1)


def test_the_temp_file_of_an_atomic_write_fits_any_name(tmp_path):
    target = tmp_path / ("n" * 250 + ".txt")  # 254 bytes: a legal name, its `.NAME.xxxx.tmp` is not
    atomic_write_text(target, "text")
    assert target.read_text() == "text" and os.listdir(tmp_path) == [target.name]


def test_a_300_byte_stem_through_the_sink(tmp_path):
    for stem in ("a" * 300, "é" * 150, "b" * 300 + "/" + "c" * 300):  # ASCII, two-byte UTF-8, long folders too
        path = f"/corpus/{stem}.flac"
        out = tmp_path / str(len(os.listdir(tmp_path)))
        with ResultSink(out, ("json", "txt", "srt", "vtt", "tsv")) as sink:
            written = sink.write(_transcript(path))
        assert written["error"] is None, written["error"]
        assert len(written["files"]) == 5
        for name in written["files"]:
            assert all(len(part.encode()) <= LIMIT for part in name.split("/"))
            assert (out / name).is_file()
        assert json.loads((out / "results.jsonl").read_text())["path"] == path
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_long_names_that_differ_only_at_the_end_get_different_files(tmp_path):
    with ResultSink(tmp_path, ("txt",), output_layout="flat") as sink:
        one = sink.write(_transcript("x" * 300 + "1.wav"))
        two = sink.write(_transcript("x" * 300 + "2.wav"))
    assert one["files"] != two["files"] and all("~" not in f for f in one["files"] + two["files"])
