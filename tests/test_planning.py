"""A run's entries stream: listed on a thread, planned one at a time and handed to the producer as
the reading side reaches them (engine/planning.py, engine/lookahead.py), with the records that
need no transcription (errors, duplicates) in their place; no model."""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from dataset_fixtures import CLIPS, CORPUS, write_shard  # noqa: E402

from whisper_nnx.engine import datasets, records  # noqa: E402
from whisper_nnx.engine.audio import input_name, load_audio  # noqa: E402
from whisper_nnx.engine.entry import Entry  # noqa: E402
from whisper_nnx.engine.lookahead import Lookahead  # noqa: E402
from whisper_nnx.engine.planning import Listing, PlanStream  # noqa: E402
from whisper_nnx.sharding.multihost import process_block  # noqa: E402
from whisper_nnx.engine.progress import Progress  # noqa: E402
from whisper_nnx.engine.reading import AudioPrefetcher  # noqa: E402
from whisper_nnx.engine.results import done_keys, plan_steps  # noqa: E402
from whisper_nnx.engine.run import EXIT_OK, BulkRun  # noqa: E402


class _Decoding:
    """A producer without a model that runs the real reading side: each entry decoded (on the
    prefetcher's threads, pulled as it goes) and recorded with its duration."""

    def __init__(self, first_decoded: threading.Event):
        self.first_decoded = first_decoded

    def start(self, options) -> dict:
        return {"model": "stand-in"}

    def records(self, entries, options):
        for loaded in AudioPrefetcher((e.source() for e in entries), workers=2, max_ahead=2):
            self.first_decoded.set()
            yield records.transcript(input_name(loaded.item), text="", language="en",
                                     duration_s=loaded.duration, segments=[], windows=1)


def test_a_run_decodes_its_first_shard_while_the_next_is_still_being_listed(tmp_path, monkeypatch):
    """The second shard's headers are read only once audio of the first was decoded (it waits up
    to 20 s for that): listing everything before the first decode would make it wait in vain."""
    corpus = tmp_path / "shards"
    corpus.mkdir()
    first, second = write_shard(corpus / "shard-000.tar"), write_shard(corpus / "shard-001.tar")
    decoded, seen = threading.Event(), {}
    real = datasets.webdataset_entries

    def listed_after_a_decode(shard, text_field="text"):
        if shard.endswith("shard-001.tar"):
            seen["decoded before the second shard was listed"] = decoded.wait(20.0)
        yield from real(shard, text_field)

    monkeypatch.setattr(datasets, "webdataset_entries", listed_after_a_decode)
    out = tmp_path / "out"
    outcome = BulkRun([str(corpus)], out, producer=_Decoding(decoded), formats=(), progress=False).run()
    assert seen == {"decoded before the second shard was listed": True}
    assert outcome.exit_code == EXIT_OK and outcome.summary["files"] == 2 * len(CLIPS)
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    expected = {f"{shard}:sample{i:03d}": load_audio(CORPUS / clip).shape[0] / 16000
                for shard in (first, second) for i, clip in enumerate(CLIPS)}
    assert sorted(r["path"] for r in lines) == sorted(expected)
    for record in lines:
        assert record["error"] is None and record["duration_s"] == pytest.approx(expected[record["path"]], abs=1e-3)


def _done(name: str, text: str) -> records.Transcript:
    return records.transcript(name, text=text, language="en", duration_s=1.0, segments=[], windows=1)


def _entries(names) -> list[Entry]:
    return [Entry(name, "no file here" if name.startswith("bad") else None) for name in names]


def test_the_plan_streams_errors_and_repeats_in_their_place():
    """Repeats of a file whose record is written are written as the listing reaches them; a repeat
    listed before its file's record waits for it; an earlier run's records are skipped."""
    entries = _entries(["a.wav", "b.wav", "a.wav", "bad:3", "c.wav", "b.wav", "./a.wav"])
    written, progress = [], Progress(0, enabled=False)
    steps = plan_steps(entries, *done_keys([_done("c.wav", "c")]))
    plan = PlanStream(steps, written.append, progress)
    todo = plan.todo()
    assert next(todo).name == "a.wav"
    plan.record(_done("a.wav", "a"))
    assert next(todo).name == "b.wav"
    assert list(todo) == [] and plan.finished and plan.skipped == 1
    plan.record(_done("b.wav", "b"))
    shown = [(r["path"], r.get("error_kind"), r.get("duplicate_of")) for r in written]
    # duplicate_of: the 1-based position of the first listing
    assert shown == [("a.wav", None, None), ("a.wav", "duplicate", 1), ("bad:3", "input", None),
                     ("./a.wav", "duplicate", 1), ("b.wav", None, None), ("b.wav", "duplicate", 2)]
    assert progress.total == 6 and not progress.listing


def test_entries_named_by_an_id_are_written_under_it_with_their_row():
    rows = [Entry("utt-1", row="data.parquet:0"), Entry("utt-1", row="data.parquet:1")]
    written = []
    plan = PlanStream(plan_steps(rows, set(), collections.Counter()), written.append,
                      Progress(0, enabled=False))
    given = list(plan.todo())
    assert [e.name for e in given] == ["data.parquet:0", "data.parquet:1"]  # two rows, one id: both done
    for entry in reversed(given):
        plan.record(_done(entry.name, entry.name))
    assert [(r["path"], r["row"], r["text"]) for r in written] == [
        ("utt-1", "data.parquet:1", "data.parquet:1"), ("utt-1", "data.parquet:0", "data.parquet:0")]


def test_each_process_takes_its_block_and_the_repeats_of_its_files():
    entries = _entries(["a.wav", "b.wav", "c.wav", "a.wav", "c.wav", "d.wav"])
    assert [i in process_block(4, 2, 0) for i in range(4)] == [True, True, False, False]
    assert [i in process_block(5, 2, 1) for i in range(5)] == [False, False, False, True, True]
    earlier = [_done("d.wav", "d")]
    for index, mine in ((0, ["a.wav", "b.wav"]), (1, ["c.wav"])):
        written = []
        plan = PlanStream(plan_steps(entries, *done_keys(earlier)), written.append, Progress(0, enabled=False),
                          owns=process_block(3, 2, index).__contains__, lead=index == 0)
        given = [e.name for e in plan.todo()]
        assert given == mine
        for name in given:
            plan.record(_done(name, name))
        repeats = [(r["path"], r["duplicate_of"]) for r in written if r.get("error_kind") == "duplicate"]
        assert repeats == ([("a.wav", 1)] if index == 0 else [("c.wav", 3)])


def test_the_listing_gives_entries_as_it_lists_and_its_errors_to_whoever_waits(tmp_path, monkeypatch):
    from whisper_nnx.engine import planning

    gate = threading.Event()

    def slow(inputs, sources):
        yield Entry("first.wav")
        gate.wait(10.0)
        yield Entry("second.wav")
        raise RuntimeError("listing broke")

    monkeypatch.setattr(planning, "expand_inputs", slow)
    listing = Listing(["x"])
    assert not listing.empty()  # the first entry, while the second is not listed
    entries = iter(listing)
    assert next(entries).name == "first.wav" and len(listing.entries) == 1
    gate.set()
    assert next(entries).name == "second.wav"
    with pytest.raises(RuntimeError, match="listing broke"):
        next(entries)
    with pytest.raises(RuntimeError, match="listing broke"):
        listing.all()


def test_an_iterator_is_pulled_on_a_thread_a_bounded_stretch_ahead():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield f"item{i}"

    ahead = Lookahead(items(), ahead=8)
    assert ahead.has(0) and ahead.take(0) == "item0"
    deadline = time.monotonic() + 5
    while len(pulled) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert 8 <= len(pulled) <= 10  # a bounded stretch past the first not taken, not all 100
    assert ahead.held(5) == "item5" and ahead.take(5) == "item5"  # taken out of order
    with pytest.raises(IndexError):
        ahead.take(5)
    assert [ahead.take(i) for i in range(1, 5)] == [f"item{i}" for i in range(1, 5)]
    assert [ahead.take(i) for i in range(6, 100)] == [f"item{i}" for i in range(6, 100)]
    assert not ahead.has(100) and ahead.held(100) is None


def test_an_iterator_that_fails_raises_after_its_items(tmp_path):
    def items():
        yield "a"
        raise OSError("bucket went away")

    ahead = Lookahead(items())
    assert ahead.take(0) == "a"
    with pytest.raises(OSError, match="bucket went away"):
        ahead.has(1)


def test_a_long_file_is_started_early_only_from_what_is_listed(tmp_path):
    """The look for long files ahead never waits on a listing: with nothing more listed, the
    reading side starts the next input in order."""
    from whisper_nnx.engine.reading import LongFiles

    gate = threading.Event()
    clip = tmp_path / "clip.flac"
    clip.write_bytes(b"x" * 20_000)
    long = tmp_path / "long.flac"
    long.write_bytes(b"x" * (6 << 20))

    def items():
        yield from [str(clip)] * 3
        gate.wait(10.0)
        yield str(long)

    files = LongFiles(Lookahead(items()))
    started = time.monotonic()
    time.sleep(0.05)
    assert files.next_after(0) is None and time.monotonic() - started < 1.0
    gate.set()
    deadline = time.monotonic() + 5
    while not files.items.has(3, wait=False) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert files.next_after(1) == 3  # listed now: found, and started ahead of the clips
    assert Path(files.items.held(3)) == long


def test_the_progress_line_counts_files_as_they_are_planned():
    import io

    stream = io.StringIO()
    progress = Progress(0, stream=stream, log_every_s=1e9)
    progress.expect(2)
    progress.update(30.0, False)
    progress.update(30.0, False)  # every file planned so far is done, more are being listed: no line
    assert "2/2+ files" in progress.line() and stream.getvalue() == ""
    progress.expect(1)
    progress.listed()
    progress.update(30.0, True)  # the last file: its line
    assert "3/3 files" in stream.getvalue() and "1 errors" in stream.getvalue()
