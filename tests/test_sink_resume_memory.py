"""A resumed `ResultSink` reads the earlier records one at a time and keeps only their output
names' hashes: memory bounded by the record count, names kept as before."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from whisper_nnx.engine import records, results
from whisper_nnx.engine.sink import CompactClaims, ResultSink

COUNT = 200_000
BYTES_PER_RECORD = 64  # CompactClaims holds 16 (two 8-byte hashes); sorting them needs about as much again


def _old_records(out, count):
    """`count` records of a finished run, each listing its json and txt files (about 400 bytes a
    line, as a short transcript's record is)."""
    text = "so my fellow Americans ask not what your country can do for you"
    with open(out / results.RESULTS, "w", encoding="utf-8") as handle:
        for i in range(count):
            name = f"corpus/{i % 1000:03d}/clip-{i:07d}"
            handle.write(json.dumps({"path": f"{name}.flac", "text": text, "language": "en", "duration_s": 4.2,
                                     "segments": [{"start": 0.0, "end": 4.2, "text": text}], "windows": 1,
                                     "error": None, "error_kind": None, "files": [f"{name}.json", f"{name}.txt"]})
                         + "\n")


@pytest.mark.slow  # 200,000 records written and read back: about 30 s, past the fast tier's budget
def test_resuming_sink_memory_is_bounded_by_the_record_count(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _old_records(out, COUNT)
    tracemalloc.start()
    try:
        with ResultSink(out, formats=("json", "txt"), repair=False) as sink:
            _, peak = tracemalloc.get_traced_memory()
            assert len(sink.names.claimed) == COUNT
    finally:
        tracemalloc.stop()
    # holding the records (or their names as strings) would take hundreds of bytes a record
    assert peak < BYTES_PER_RECORD * COUNT + (2 << 20), f"peak {peak} bytes for {COUNT} records"


def _said(path):
    return records.transcript(path, text="hello", language="en", duration_s=1.0, segments=[], windows=1)


def test_resumed_sink_keeps_earlier_names_and_claims_the_next(tmp_path):
    out = tmp_path / "out"
    with ResultSink(out, formats=("txt",), output_layout="flat") as sink:
        first = sink.write(_said("a/audio.flac"))
        row = sink.write({**records.as_dict(_said("id-1")), "row": "rows.parquet:1"})
    assert (first["files"], row["files"]) == (["audio.txt"], ["id-1.txt"])
    (out / "audio.txt").unlink()  # the name stays the earlier record's even with its file gone
    with ResultSink(out, formats=("txt",), output_layout="flat") as sink:
        assert sink.names.claimed.get("audio") == "a/audio.flac" and sink.names.claimed.get("audio") != "b"
        assert sink.names.claimed.get("id-1") == "rows.parquet:1" and "nothing" not in sink.names.claimed
        second = sink.write(_said("b/audio.flac"))
        third = sink.write(_said("c/audio.flac"))
        again = sink.write({**records.as_dict(_said("id-1")), "row": "rows.parquet:1"})  # its own name again
        other = sink.write({**records.as_dict(_said("id-1")), "row": "rows.parquet:2"})
    assert [r["files"] for r in (second, third, again, other)] == [["audio~2.txt"], ["audio~3.txt"], ["id-1.txt"],
                                                                  ["id-1~2.txt"]]
    assert not (out / "audio.txt").exists()


def test_compact_claims_first_record_holds_a_name():
    claims = CompactClaims.of_records([{"path": "x.flac", "files": ["x.json", "x.txt"]},
                                       {"path": "y.flac", "files": ["x.json"]}, {"path": "z.flac", "files": []}])
    assert claims.get("x") == "x.flac" and claims.get("x") != "y.flac" and claims.get("z") is None
    claims["z"] = "z.flac"
    assert claims.get("z") == "z.flac" and len(claims) == 2
