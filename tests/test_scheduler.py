"""The bulk machinery without a model: batch packing, prefetch, results files, progress."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from whisper_nnx.engine import records, results
from whisper_nnx.engine.decode.window_decoder import DecodedWindow
from whisper_nnx.engine.inputs import Entry
from whisper_nnx.engine.longform import PreparedFile, WindowRequest
from whisper_nnx.engine.progress import Progress
from whisper_nnx.engine.reading import AudioPrefetcher, PrefetchStream
from whisper_nnx.engine.scheduler import WindowScheduler


class _Audio:
    def __init__(self, seconds: float):
        self.duration = seconds
        self.n_samples = int(seconds * 16000)

    def window(self, frame: int) -> np.ndarray:
        return np.full(480320, frame, np.float32)


class _FakeJob:
    """A file whose windows have the given content lengths; done when all came back."""

    def __init__(self, name: str, contents: list[int], sequential: bool):
        self.name, self.contents, self.sequential = name, contents, sequential
        self.audio = _Audio(10.0)
        self.issued, self.back = 0, []

    def requests(self):
        if self.sequential:  # one window out at a time
            if self.issued > len(self.back) or self.issued == len(self.contents):
                return []
            self.issued += 1
            return [WindowRequest(self, self.issued - 1, 0, self.contents[self.issued - 1], 0.0, [1])]
        out = [WindowRequest(self, k, 0, c, 0.0, [1]) for k, c in enumerate(self.contents[self.issued:])]
        self.issued = len(self.contents)
        return out

    def accept(self, request, window):
        self.back.append(request.chunk)

    @property
    def done(self):
        return len(self.back) == len(self.contents)

    def result(self, path, *, language, duration_s, **extra):
        return records.transcript(path, text=self.name, language=language, duration_s=duration_s, segments=[],
                                  windows=len(self.back), **extra)


class _Decoded(AudioPrefetcher):
    """Files decoded before the scheduler asks (it waits for each one): which files a batch
    holds does not depend on the decoding threads' timing."""

    def stream(self):
        stream = PrefetchStream(self, ordered=True)  # input order, each file waited for
        ask = stream.next
        stream.next = lambda block=True: ask(block=True)
        return stream


def _run(files: dict[str, list[int]], batch: int, sequential: bool, fail_on: str | None = None,
         per_file: int = 3):
    arrays = [np.full(16000, 0.1 if name != "nan" else np.nan, np.float32) for name in files]
    names = list(files)
    batches = []

    class FakeWork:  # the model side, as scheduler.WindowWork
        def prepare(self, arrivals):
            return [PreparedFile(_FakeJob(names[a.index], files[names[a.index]], sequential), "en", None)
                    for a in arrivals]

        def decode(self, requests):
            batches.append([r.audio_frames for r in requests])
            if fail_on is not None and fail_on in {r.job.name for r in requests}:
                raise RuntimeError("device fell over")
            return [DecodedWindow([], "", 0.0, 0.0, 0.0, 0.0, 0.0) for _ in requests]

    scheduler = WindowScheduler(FakeWork(), batch, windows_per_file=lambda a: 1 if sequential else per_file,
                                lookahead=2)
    with np.errstate(invalid="ignore"):
        out = dict(scheduler.run(_Decoded(arrays, workers=2)))
    return {names[i]: r for i, r in out.items()}, batches


def test_chunked_windows_of_many_files_fill_whole_batches():
    files = {f"f{i}": [3000, 3000, 1000 + 100 * i] for i in range(7)}
    records, batches = _run(files, batch=4, sequential=False)
    assert sorted(records) == sorted(files) and all(r["windows"] == 3 for r in records.values())
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 1]  # 21 windows, only the last batch short
    assert sum(len(b) for b in batches) == 21


def test_batches_group_windows_of_similar_length():
    # Alternating long and short windows: with a lookahead of 2 batches, each batch takes the
    # oldest window and the ones closest to it in length.
    files = {f"f{i}": [3000 if i % 2 == 0 else 500] for i in range(8)}
    _, batches = _run(files, batch=2, sequential=False, per_file=1)
    assert all(len(set(b)) == 1 for b in batches), batches


def test_sequential_files_advance_side_by_side_and_refill():
    files = {"long": [3000] * 5, "a": [3000, 200], "b": [900], "c": [3000, 3000, 10], "d": [50]}
    records, batches = _run(files, batch=3, sequential=True)
    assert {n: r["windows"] for n, r in records.items()} == {n: len(c) for n, c in files.items()}
    assert sum(len(b) for b in batches) == sum(len(c) for c in files.values())
    assert max(len(b) for b in batches) == 3 and len(batches) <= 6  # 12 windows in few batches


def test_bad_inputs_and_failed_batches_become_error_records():
    files = {"ok": [3000], "nan": [3000], "doomed": [3000], "later": [3000]}
    records, _ = _run(files, batch=2, sequential=True, fail_on="doomed")
    assert "NaN" in records["nan"]["error"]
    assert "decoding failed" in records["doomed"]["error"] and "device fell over" in records["doomed"]["error"]
    assert records["later"]["error"] is None and records["later"]["text"] == "later"
    assert len(records) == 4


def _pipelined_run(in_flight: int):
    """Three chunked files of 4 windows, batches of 4: taking the first batch's first window back
    waits (up to 2 s) for the device to start on the next batch. (results, whether it did,
    threads that decoded)."""
    import threading
    started = {"second": threading.Event()}
    threads, decoded = set(), []

    class SlowAccept(_FakeJob):
        def accept(self, request, window):
            if len(decoded) == 1 and not self.back:
                started["waited"] = started["second"].wait(2.0)
            super().accept(request, window)

    class FakeWork:
        def prepare(self, arrivals):
            return [PreparedFile(SlowAccept(f"f{a.index}", [3000] * 4, False), "en", None) for a in arrivals]

        def decode(self, requests):
            threads.add(threading.current_thread().name)
            decoded.append(len(requests))
            if len(decoded) == 2:
                started["second"].set()
            return [DecodedWindow([], "", 0.0, 0.0, 0.0, 0.0, 0.0) for _ in requests]

    scheduler = WindowScheduler(FakeWork(), 4, windows_per_file=lambda a: 4, lookahead=2, in_flight=in_flight)
    arrays = [np.full(16000, 0.1, np.float32) for _ in range(3)]
    out = dict(scheduler.run(_Decoded(arrays, workers=1)))
    return out, started.get("waited"), threads, decoded


def test_the_next_batch_decodes_while_the_host_takes_one_back():
    out, overlapped, threads, decoded = _pipelined_run(in_flight=2)
    assert overlapped is True  # batch 2 was on the device while batch 1's windows were taken back
    assert threads and threading_main() not in threads  # the device's own thread
    assert sorted(out) == [0, 1, 2] and all(r["windows"] == 4 and r["error"] is None for r in out.values())
    assert decoded == [4, 4, 4]
    serial, overlapped, threads, _ = _pipelined_run(in_flight=1)
    assert overlapped is False and threads == {threading_main()}  # one at a time, on the caller's thread
    assert {i: r["windows"] for i, r in serial.items()} == {i: r["windows"] for i, r in out.items()}


def test_a_batch_goes_to_the_device_while_a_slow_file_still_decodes():
    """Five one-window files, batches of 2, a lookahead of 4 batches: the fifth file decodes
    until the device has started (up to 2 s). The scheduler hands over the files it has instead
    of waiting to fill its lookahead."""
    import threading
    decoded = threading.Event()
    waited = {}

    class SlowFifth(AudioPrefetcher):
        def _load(self, index, item):
            if index == 4:
                waited["device started"] = decoded.wait(2.0)
            return super()._load(index, item)

    class FakeWork:
        def prepare(self, arrivals):
            return [PreparedFile(_FakeJob(f"f{a.index}", [3000], True), "en", None) for a in arrivals]

        def decode(self, requests):
            decoded.set()
            return [DecodedWindow([], "", 0.0, 0.0, 0.0, 0.0, 0.0) for _ in requests]

    scheduler = WindowScheduler(FakeWork(), 2, windows_per_file=lambda a: 1, lookahead=4)
    out = dict(scheduler.run(SlowFifth([np.full(16000, 0.1, np.float32) for _ in range(5)], workers=2)))
    assert waited == {"device started": True}
    assert sorted(out) == [0, 1, 2, 3, 4] and all(r["error"] is None for r in out.values())


def threading_main() -> str:
    import threading
    return threading.main_thread().name


def test_repair_cuts_only_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"path": "a"}\n{"path": "b"}\n{"path": "c')
    assert results.repair(path) == len('{"path": "c')
    assert path.read_text() == '{"path": "a"}\n{"path": "b"}\n'
    assert results.repair(path) == 0
    path.write_text('{"path": "a"}\n{"path": "b", "te\n')  # ends in a newline but is not JSON
    results.repair(path)
    assert path.read_text() == '{"path": "a"}\n'


def _entries(names: list[str]) -> list[Entry]:
    return [Entry(name) for name in names]


def test_plan_run_counts_repeats_and_duplicates(tmp_path):
    entries = ["a.wav", "b.wav", "a.wav", "./c.wav", "c.wav", "d.wav"]
    plan = results.plan_run(_entries(entries), [])
    assert [e.name for e in plan.todo] == ["a.wav", "b.wav", "./c.wav", "d.wav"]
    assert plan.ready == [] and plan.skipped == 0
    assert plan.repeats_of("a.wav") == [("a.wav", 2, 0)]
    assert plan.repeats_of("c.wav") == [("c.wav", 4, 3)]  # ./c.wav and c.wav are the same file
    # After a kill: a, b and the duplicate of a have records; c and d do not.
    done = [{"path": "a.wav", "error": None}, {"path": "b.wav", "error": None},
            records.duplicate("a.wav", 0)]
    plan = results.plan_run(_entries(entries), done)
    assert [e.name for e in plan.todo] == ["./c.wav", "d.wav"] and plan.skipped == 3 and plan.ready == []
    assert plan.repeats_of("./c.wav") == [("c.wav", 4, 3)]


def test_progress_line_and_summary():
    stream = io.StringIO()
    progress = Progress(4, stream=stream, log_every_s=1e9)
    progress.start -= 10.0  # ten seconds into the run
    progress.update(30.0, error=False)
    progress.update(None, error=True)
    line = progress.line(progress.start + 10.0)
    assert "2/4 files" in line and "1 errors" in line and "3.0x real time" in line
    assert "eta 0:00:10" in line  # two files left at 15 s of audio each, 3x real time
    summary = progress.summary(skipped=5)
    assert summary["files"] == 2 and summary["errors"] == 1 and summary["skipped_already_done"] == 5
    assert summary["audio_hours"] == pytest.approx(30 / 3600, abs=1e-6)
    assert summary["rtfx"] == pytest.approx(3.0, rel=0.05) and "real_time_factor" not in summary
    json.dumps(summary)


def test_progress_on_a_terminal_is_a_tqdm_bar():
    tqdm = pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(4, stream=stream)
    progress.update(30.0, error=False)
    progress.update(None, error=True)
    assert isinstance(progress.bar, tqdm.tqdm) and progress.bar.n == 2
    progress.summary()
    shown = stream.getvalue()
    assert "\r" in shown and "2/4 files" in shown and "1 errors" in shown and "0.01 h audio" in shown
    assert Progress(4, stream=io.StringIO()).bar is None  # not a terminal: plain lines, no bar
