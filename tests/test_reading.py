"""The reading side without a model: inputs decoded ahead in input order, bad inputs reported per
input, and which files' speech is looked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from whisper_nnx.engine import reading
from whisper_nnx.engine.audio import N_SAMPLES, SAMPLE_RATE, load_audio
from whisper_nnx.engine.inputs import Entry
from whisper_nnx.engine.reading import NOT_READY, AudioPrefetcher, LoadedInput, PrefetchStream, error_record, speech_finder
from whisper_nnx.engine.records import INPUT, RUN
from whisper_nnx.engine.spool import ArrayAudio
from whisper_nnx.engine.vad import VadOptions

CLIP = Path(__file__).parent / "data" / "corpus" / "joe_cat.flac"


def test_prefetcher_keeps_input_order_and_reports_bad_samples(tmp_path):
    items = [np.ones(1600 * (i + 1), np.float32) for i in range(6)]
    items[3] = np.zeros((0,), np.float32)
    items.append(str(tmp_path / "missing.wav"))
    got = list(AudioPrefetcher(items, workers=3, max_ahead=2))
    assert [g.index for g in got] == list(range(7))
    assert [g.audio.n_samples for g in got if g.error is None] == [1600, 3200, 4800, 8000, 9600]
    assert "non-empty" in got[3].error and "not found" in got[6].error


def test_prefetcher_decodes_entries_and_keeps_their_errors(tmp_path):
    (tmp_path / "a.flac").write_bytes(CLIP.read_bytes())
    entries = [Entry(str(tmp_path / "a.flac")),
               Entry("a#t=0.5", opener=lambda: str(tmp_path / "a.flac"), offset_s=0.5),
               Entry("list.jsonl:2", "list.jsonl:2: manifest line is not JSON (Expecting value)")]
    got = list(AudioPrefetcher([e.source() for e in entries], workers=2))
    clip = load_audio(CLIP)
    assert [g.error for g in got] == [None, None, "list.jsonl:2: manifest line is not JSON (Expecting value)"]
    assert got[2].error_kind == INPUT
    assert [g.audio.n_samples for g in got[:2]] == [clip.size, clip.size - SAMPLE_RATE // 2]
    assert got[0].duration == pytest.approx(clip.size / SAMPLE_RATE)
    assert got[0].seconds_in_memory == got[0].duration  # a short file is held in memory, not spooled
    record = error_record(got[1], "decoding failed: boom")
    assert record["path"] == "a#t=0.5" and record["error"] == "a#t=0.5: decoding failed: boom"
    assert record["error_kind"] == RUN


def test_speech_finder_asks_only_what_the_options_need(monkeypatch):
    pytest.importorskip("onnxruntime")
    assert speech_finder(None, skip_non_speech=False, chunked=False) is None
    asked = []
    monkeypatch.setattr(reading, "speech_regions_streaming",
                        lambda pieces, options=None: asked.append(options) or [(0, 1)])
    short, long = ArrayAudio(np.zeros(N_SAMPLES, np.float32)), ArrayAudio(np.zeros(N_SAMPLES + 1, np.float32))
    vad = VadOptions(threshold=0.3)
    assert speech_finder(vad, skip_non_speech=False, chunked=False)(short) == [(0, 1)]
    assert speech_finder(vad, skip_non_speech=True, chunked=True)(short) == [(0, 1)]
    assert asked == [vad, VadOptions(threshold=0.3, max_speech_duration_s=29.0)]  # chunked: one window at most
    asked.clear()
    skip = speech_finder(None, skip_non_speech=True, chunked=False)
    assert skip(short) is None and asked == []  # a file of one window is decoded whole
    assert skip(long) == [(0, 1)] and asked == [None]


def test_loaded_input_without_audio_holds_nothing():
    failed = LoadedInput(3, "x.wav", None, "x.wav: file not found", error_kind=INPUT)
    assert failed.duration == 0.0 and failed.seconds_in_memory == 0.0
    failed.close()


def test_a_file_still_decoding_does_not_hold_back_the_ones_decoded_after_it(tmp_path):
    """The scheduler's stream gives files as they finish decoding: while the first file is still
    being decoded, the short ones behind it come out, and it comes last."""
    import threading

    release = threading.Event()

    class SlowFirst(AudioPrefetcher):
        def _load(self, index, item):
            if index == 0:
                release.wait(10.0)
            return super()._load(index, item)

    (big := tmp_path / "big.flac").write_bytes(CLIP.read_bytes())
    small = []
    for i in range(3):
        (path := tmp_path / f"small{i}.flac").write_bytes(CLIP.read_bytes())
        small.append(str(path))
    prefetcher = SlowFirst([str(big), *small], workers=2, max_ahead=4)
    with prefetcher.stream() as stream:
        got = [stream.next().index for _ in range(3)]  # blocking: the first ones finished
        assert stream.next(block=False) is NOT_READY  # only the slow one is left
        release.set()
        got.append(stream.next().index)
        assert stream.next() is None
    assert sorted(got[:3]) == [1, 2, 3] and got[3] == 0


def test_dataset_row_groups_held_count_toward_the_audio_in_memory(monkeypatch):
    """The prefetcher bounds the process's dataset row-group cache to its own `max_seconds` of
    sample bytes and counts the groups held as audio waiting: with the bound's 10 s held, files
    are read one at a time (the one file always allowed), not `max_ahead` at once."""
    from whisper_nnx.engine import datasets

    class Held:  # a cache holding 10 s of sample bytes (4 bytes a sample)
        bounded = None

        def held_bytes(self):
            return 10 * 4 * SAMPLE_RATE

        def bound(self, limit):
            Held.bounded = limit

    tables = datasets.OpenTables()
    tables.groups = Held()
    monkeypatch.setattr(datasets, "TABLES", tables)
    items = [np.ones(2 * SAMPLE_RATE, np.float32) for _ in range(6)]
    prefetcher = AudioPrefetcher(items, workers=2, max_ahead=8, max_seconds=10.0)
    assert Held.bounded == 10 * 4 * SAMPLE_RATE
    in_flight = []
    with prefetcher.stream() as stream:
        while (loaded := stream.next()) is not None:
            in_flight.append(stream._submitted - loaded.index)
            prefetcher.release(loaded.seconds_in_memory)
    assert in_flight == [1] * 6  # each file submitted only once the one before was taken
    assert prefetcher.seconds_held() == pytest.approx(10.0)
    tables.groups = datasets.GroupCache()  # nothing held: the read-ahead fills `max_ahead` at once
    prefetcher = AudioPrefetcher(items, workers=2, max_ahead=8, max_seconds=10.0)
    with prefetcher.stream() as stream:
        stream.next()
        assert stream._submitted == 6


def _sized_files(folder, sizes):
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"f{i:03d}.flac"
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: only the size matters to the order
        paths.append(str(path))
    return paths


def _load_order(items, workers, ordered, long_ids):
    """The order the stream's threads started loading `items` (a fake decode: a long file takes
    50 ms, a clip 5 ms) and the most long files ever decoding at once."""
    import threading
    import time

    order, lock, busy = [], threading.Lock(), {"now": 0, "most": 0}

    class Recorded(AudioPrefetcher):
        def _load(self, index, item):
            with lock:
                order.append(index)
                if index in long_ids:
                    busy["now"] += 1
                    busy["most"] = max(busy["most"], busy["now"])
            time.sleep(0.05 if index in long_ids else 0.005)
            if index in long_ids:
                with lock:
                    busy["now"] -= 1
            return LoadedInput(index, item, ArrayAudio(np.zeros(160, np.float32)))

    prefetcher = Recorded(items, workers=workers, max_ahead=8)
    got = []
    with PrefetchStream(prefetcher, ordered=ordered) as stream:
        while (loaded := stream.next()) is not None:
            got.append(loaded.index)
    assert sorted(got) == list(range(len(items)))  # every input once
    return order, busy["most"]


def test_long_local_files_start_early_one_at_a_time(tmp_path):
    """Given as decoded with two threads, the long files (8 x the stretch's median size, 4 MiB at
    least) among the inputs ahead start before the clips in front of them, one at a time, so their
    sequential windows do not trail the run; in input order, or with one thread, nothing moves."""
    from whisper_nnx.engine.reading import PrefetchStream

    sizes = [20_000] * 40 + [6 << 20, 6 << 20]  # 40 clips, then two long recordings
    items = _sized_files(tmp_path, sizes)
    order, most = _load_order(items, 2, False, {40, 41})
    assert order.index(40) == 0 and order.index(41) < 20, order
    assert most == 1
    assert sorted(order) == list(range(42))
    assert _load_order(items, 2, True, {40, 41})[0] == list(range(42))
    assert _load_order(items, 1, False, {40, 41})[0] == list(range(42))


def test_long_files_are_long_against_their_stretch(tmp_path):
    from whisper_nnx.engine.reading import LongFiles

    (tmp_path / "same").mkdir()
    assert LongFiles(_sized_files(tmp_path / "same", [6 << 20] * 6)).next_after(0) is None  # all alike
    assert LongFiles(["s3://bucket/a.flac", "missing.flac"] * 5).next_after(0) is None  # not local files
    small = [3 << 20 if i == 5 else 20_000 for i in range(10)]  # 150x the median, under 4 MiB: a clip
    (tmp_path / "small").mkdir()
    assert LongFiles(_sized_files(tmp_path / "small", small)).next_after(0) is None
    files = LongFiles(_sized_files(tmp_path, [20_000] * 10 + [5 << 20, 20_000, 5 << 20]))
    assert files.next_after(0) == 10 and files.next_after(0) == 12 and files.next_after(0) is None
    assert [files.started(i) for i in (10, 11, 12, 10)] == [True, False, True, False]
    files = LongFiles(_sized_files(tmp_path / "small", small[:5]) + _sized_files(tmp_path, [5 << 20]))
    assert files.next_after(5) is None  # the frontier itself: next in order anyway
