"""benchmarks/bench_feed.py's smoke mode: the real pipeline from files to records against the
stand-in device, and the stand-in's own clock."""

from __future__ import annotations

import time

import bench_feed  # benchmarks/ is on pytest's pythonpath
import numpy as np
import pytest


class _Tokenizer:
    eot, timestamp_begin = 50256, 50363

    def encode(self, text):
        return list(range(100, 100 + 2 * len(text.split())))


class _Config:
    sample_len = 80


def test_stand_in_batches_queue_on_the_device_clock():
    device = bench_feed.StandInDevice(_Tokenizer(), "a few words of text " * 30, seconds_per_row=0.01)
    prompt = np.tile(np.arange(4, dtype=np.int32), (8, 1))
    first = device.generate(None, prompt, _Config())
    second = device.generate(None, prompt[:4], _Config())
    assert second.ready_at == pytest.approx(first.ready_at + 0.04, abs=1e-9)  # starts when the first ends
    assert first.ready_at - device.first_start == pytest.approx(0.08, abs=1e-9)
    result = device.fetch(second, 4)
    assert time.perf_counter() >= second.ready_at
    assert device.busy_s == pytest.approx(0.12) and device.rows == 12 and device.batches == 2
    tokens = result.tokens
    assert tokens.shape == (4, 4 + 80) and (tokens[:, :4] == prompt[:4]).all()
    assert (tokens[:, 4] == _Tokenizer.timestamp_begin).all()
    assert (tokens[:, 5 + bench_feed.TEXT_TOKENS] == _Tokenizer.timestamp_begin + 1400).all()
    assert (tokens[:, 6 + bench_feed.TEXT_TOKENS:] == _Tokenizer.eot).all()


@pytest.mark.slow
def test_smoke_runs_files_to_records_against_the_stand_in():
    corpus, rows = bench_feed.measure(bench_feed.parse_args(["--smoke"]))
    files = corpus["long_files"] + corpus["clips"]
    assert [r["run"].split(" ")[0] for r in rows] == ["feed", "loop,", "loop,", "tiny.en", "large-v3"]
    for row in rows:
        assert row["files"] == files and row["audio_s"] == pytest.approx(corpus["audio_s"], abs=0.5)
        assert row["device_busy_s"] == pytest.approx(row["seconds_per_row"] * row["rows"], rel=1e-6, abs=6e-5)
        assert 0 <= row["busy_of_run"] <= 1
    assert rows[0]["device_busy_s"] == 0 and rows[0]["rate_x"] > 0
    assert len({r["rows"] for r in rows}) == 1  # the same windows decoded by every run
    large = rows[-1]
    assert large["seconds_per_row"] == pytest.approx(30 / 2008)
    assert large["of_bound"] == pytest.approx(large["rate_x"] / min(large["device_rate_x"], rows[0]["rate_x"]),
                                              rel=1e-2)
