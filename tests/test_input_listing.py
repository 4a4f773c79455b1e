"""Nothing lost at a million inputs (issue 25, the listing side): one bad file, shard, manifest
line, name or row is one error entry (its record says why) and the listing goes on; NeMo spans
have exact names and are decoded from a seek, not from the start of their file."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from dataset_fixtures import CLIPS, CORPUS, write_saved, write_shard  # noqa: E402
from test_audio import _write  # noqa: E402

from whisper_nnx.engine import audio  # noqa: E402
from whisper_nnx.engine.audio import AudioDecodeError, load_audio  # noqa: E402
from whisper_nnx.engine.inputs import SourceOptions, expand_inputs  # noqa: E402

CLIP = CORPUS / CLIPS[0]


def _errors(entries) -> dict[str, str]:
    return {e.name: e.error for e in entries if e.error is not None}


# --- 1, 2: one unreadable dataset file, shard or state.json is one error entry ----------------------

def test_an_unreadable_dataset_file_is_one_error_entry_and_the_folder_goes_on(tmp_path):
    for name in ("a.flac", "c.flac"):
        (tmp_path / name).write_bytes(CLIP.read_bytes())
    (tmp_path / "b.parquet").write_bytes(b"this is not a parquet file at all")
    entries = list(expand_inputs([str(tmp_path)]))
    assert [e.name for e in entries] == [str(tmp_path / n) for n in ("a.flac", "b.parquet", "c.flac")]
    errors = _errors(entries)
    assert list(errors) == [str(tmp_path / "b.parquet")]
    assert "b.parquet" in errors[str(tmp_path / "b.parquet")]


def _gzipped_shard(path):
    raw = write_shard(path.with_suffix(".raw"), CLIPS[:1]).read_bytes()
    path.write_bytes(gzip.compress(raw))
    return path


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b""),
                                  lambda p: p.write_bytes(b"\x00garbage" * 200),
                                  _gzipped_shard], ids=["empty", "corrupt", "gzipped"])
def test_a_bad_tar_shard_is_one_error_entry(tmp_path, make):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.flac").write_bytes(CLIP.read_bytes())
    shard = folder / "b.tar"
    make(shard)
    write_shard(folder / "c.tar", CLIPS[:1])
    entries = list(expand_inputs([str(folder), str(shard)]))
    assert [e.name for e in entries] == [str(folder / "a.flac"), str(shard), f"{folder / 'c.tar'}:sample000",
                                         str(shard)]
    errors = _errors(entries)
    assert list(errors) == [str(shard)] and "b.tar" in errors[str(shard)]


def test_a_saved_dataset_state_without_filename_is_one_error_entry(tmp_path):
    folder = write_saved(tmp_path / "saved", CLIPS[:1])
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"name": "data-00000-of-00001.arrow"}]
    (folder / "state.json").write_text(json.dumps(state))
    good = write_shard(tmp_path / "good.tar", CLIPS[:1])
    entries = list(expand_inputs([str(folder), str(good)]))
    assert [e.name for e in entries] == [str(folder), f"{good}:sample000"]
    assert "state.json" in entries[0].error and entries[1].error is None


# --- 3: NeMo spans ----------------------------------------------------------------------------------

def _nemo(tmp_path, lines) -> list:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return list(expand_inputs([str(manifest)]))


def test_nemo_span_names_are_exact(tmp_path):
    entries = _nemo(tmp_path, [{"audio_filepath": "r.wav", "offset": 1234.561, "duration": 2},
                               {"audio_filepath": "r.wav", "offset": 1234.564, "duration": 2},
                               {"audio_filepath": "r.wav", "offset": 0.1, "duration": 0.2},
                               {"audio_filepath": "r.wav", "offset": 3, "duration": 1.5}])
    wav = str(tmp_path / "r.wav")
    assert [e.name for e in entries] == [f"{wav}#t=1234.561,1236.561", f"{wav}#t=1234.564,1236.564",
                                         f"{wav}#t=0.1,0.3", f"{wav}#t=3,4.5"]
    assert len({e.key for e in entries}) == 4
    assert [(e.offset_s, e.duration_s) for e in entries] == [(1234.561, 2.0), (1234.564, 2.0), (0.1, 0.2), (3.0, 1.5)]


def test_nemo_non_finite_or_negative_seconds_are_error_entries(tmp_path):
    entries = _nemo(tmp_path, ['{"audio_filepath": "r.wav", "offset": Infinity, "duration": 1}',
                               '{"audio_filepath": "r.wav", "offset": NaN, "duration": 1}',
                               '{"audio_filepath": "r.wav", "offset": 1, "duration": -1}',
                               '{"audio_filepath": "r.wav", "offset": 1, "duration": Infinity}',
                               '{"audio_filepath": "r.wav", "offset": 1e300, "duration": 1}',
                               '{"audio_filepath": "r.wav", "offset": 1, "duration": 2}'])
    manifest = tmp_path / "m.jsonl"
    assert [e.name for e in entries[:5]] == [f"{manifest}:{n}" for n in range(1, 6)]
    fields = ["offset", "offset", "duration", "duration", "offset"]
    for entry, field in zip(entries, fields):
        assert entry.error and f'"{field}"' in entry.error, entry
    assert entries[5].error is None


def _signal(seconds: float, rate: int) -> np.ndarray:
    """A chirp and a tone [1, n]: a span one sample off would differ by far more than the tolerance
    (no noise: AAC codes noise-like bands as noise drawn at random, which no two decodes share)."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * (300 * t + 20 * t ** 2)) + 0.1 * np.sin(2 * np.pi * 1234.5 * t))[None]


@pytest.mark.parametrize("name,codec,fmt,rate,seeks", [("r.wav", "pcm_s16le", None, 16000, True),
                                                        ("r.flac", "flac", None, 44100, True),
                                                        ("r.mp3", "libmp3lame", None, 44100, True),
                                                        ("r.m4a", "aac", "mp4", 44100, True),
                                                        ("r.ogg", "libopus", "ogg", 48000, True),
                                                        # timestamps in ms, not samples: from the start
                                                        ("r.mkv", "flac", "matroska", 48000, False)])
@pytest.mark.parametrize("url", [False, True], ids=["path", "url"])
def test_nemo_spans_seek_and_equal_the_slice_of_a_full_decode(tmp_path, monkeypatch, name, codec, fmt, rate,
                                                              seeks, url):
    import fsspec

    _write(tmp_path / name, _signal(30.0, rate), rate, codec, fmt)
    full = load_audio(tmp_path / name)
    where = name
    if url:
        where = f"memory://seek-test/{tmp_path.name}/{name}"
        fsspec.filesystem("memory").pipe(where.removeprefix("memory:/"), (tmp_path / name).read_bytes())
    entries = _nemo(tmp_path, [{"audio_filepath": where, "offset": 21.2345, "duration": 1.5},
                               {"audio_filepath": where, "offset": 17.01, "duration": 3},
                               {"audio_filepath": where, "offset": 2.5, "duration": 0.5},
                               {"audio_filepath": where, "offset": 28.5}])
    decoded = []
    chunks = audio._native_mono_chunks
    monkeypatch.setattr(audio, "_native_mono_chunks",
                        lambda *a, **k: (decoded.append(x.size) or (x, r) for x, r in chunks(*a, **k)))
    for entry in entries:
        decoded.clear()
        got = load_audio(entry.source())
        start = round(entry.offset_s * 16000)
        want = full[start:] if entry.duration_s is None else full[start:start + round(entry.duration_s * 16000)]
        assert got.shape == want.shape
        # ffmpeg's AAC decoder gives the file's last frame (1024 samples) a little differently
        # (up to 4e-3) after a seek than after decoding the whole file: the codec, not the span
        cut = got.size - (400 if codec == "aac" and entry.duration_s is None else 0)
        np.testing.assert_allclose(got[:cut], want[:cut], atol=1e-4, rtol=0)
        end_s = 30.0 if entry.duration_s is None else entry.offset_s + entry.duration_s
        seeked = sum(decoded) < (end_s - 0.5) * rate  # decoded from a second before the span, not from 0
        assert 0 < sum(decoded) and seeked == seeks


def test_a_span_past_the_end_is_an_error(tmp_path):
    _write(tmp_path / "r.flac", _signal(5.0, 16000), 16000, "flac", None)
    [entry] = _nemo(tmp_path, [{"audio_filepath": "r.flac", "offset": 9.0, "duration": 1}])
    with pytest.raises(AudioDecodeError, match="past the end"):
        load_audio(entry.source())


# --- 4: names that are not UTF-8 ----------------------------------------------------------------------

def test_a_file_name_that_is_not_utf8_is_an_error_entry(tmp_path):
    for name in ("a.flac", "c.flac"):
        (tmp_path / name).write_bytes(CLIP.read_bytes())
    with open(os.path.join(os.fsencode(tmp_path), b"b\xff.flac"), "wb") as f:
        f.write(CLIP.read_bytes())
    entries = list(expand_inputs([str(tmp_path)]))
    assert [e.name for e in entries] == [str(tmp_path / n) for n in ("a.flac", "b\\xff.flac", "c.flac")]
    assert list(_errors(entries)) == [str(tmp_path / "b\\xff.flac")]
    assert "UTF-8" in entries[1].error
    for entry in entries:
        json.dumps({"path": entry.name, "error": entry.error}, ensure_ascii=False).encode("utf-8")


def test_a_tar_member_or_manifest_line_that_is_not_utf8_is_an_error_entry(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for key in ("a", os.fsdecode(b"b\xff"), "c"):
            data = CLIP.read_bytes()
            info = tarfile.TarInfo(f"{key}.flac")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "x.wav"}\n{"path": "\\ud800.wav", "text": "t\\udfff"}\n{"path": "y.wav"}\n')
    listing = tmp_path / "l.txt"
    listing.write_bytes(b"p.wav\nq\xff.wav\nr.wav\n")
    entries = list(expand_inputs([str(shard), str(manifest), str(listing)]))
    assert [e.name for e in entries] == [f"{shard}:a", f"{shard}:b\\xff", f"{shard}:c", "x.wav", "\\ud800.wav",
                                         "y.wav", "p.wav", "q\\xff.wav", "r.wav"]
    assert sorted(_errors(entries)) == sorted([f"{shard}:b\\xff", "\\ud800.wav", "q\\xff.wav"])
    for entry in entries:
        json.dumps({"path": entry.name, "error": entry.error, "text": entry.text}, ensure_ascii=False).encode()


# --- 5: dataset rows naming files outside the dataset -------------------------------------------------

def test_rows_naming_absolute_parent_or_url_paths_need_follow_row_paths(tmp_path):
    import fsspec

    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    for path in (data / "audio" / "a.flac", tmp_path / "outside.flac"):
        path.write_bytes(CLIP.read_bytes())
    fsspec.filesystem("memory").pipe("/rows-test/a.flac", CLIP.read_bytes())
    paths = ["audio/a.flac", str(tmp_path / "outside.flac"), "../outside.flac", "memory://rows-test/a.flac"]
    table = data / "rows.parquet"
    pq.write_table(pa.table({"audio": pa.array([{"bytes": None, "path": p} for p in paths],
                                               pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}), table)
    clip = load_audio(CLIP)
    entries = list(expand_inputs([str(table)]))
    np.testing.assert_array_equal(load_audio(entries[0].source()), clip)
    for entry in entries[1:]:
        with pytest.raises(AudioDecodeError, match="--follow-row-paths"):
            load_audio(entry.source())
    for entry in expand_inputs([str(table)], SourceOptions(follow_row_paths=True)):
        np.testing.assert_array_equal(load_audio(entry.source()), clip)


# --- 6: the run's own files are not inputs ------------------------------------------------------------

def test_the_runs_own_files_in_an_input_folder_are_not_inputs(tmp_path):
    (tmp_path / "a.flac").write_bytes(CLIP.read_bytes())
    (tmp_path / "out").mkdir()
    pq.write_table(pa.table({"path": ["a.flac"], "text": ["hello"]}), tmp_path / "out" / "results.parquet")
    pq.write_table(pa.table({"path": ["a.flac"], "text": ["hello"]}), tmp_path / "results.parquet")
    (tmp_path / "results.jsonl").write_text('{"path": "a.flac"}\n')
    (tmp_path / "summary.json").write_text('{"files": 1}')
    (tmp_path / "eval.json").write_text('{"wer": 0.1}')
    assert [e.name for e in expand_inputs([str(tmp_path)])] == [str(tmp_path / "a.flac")]


def test_a_manifest_line_whose_text_holds_a_unicode_line_separator_stays_one_entry(tmp_path):
    """JSON leaves U+2028/U+2029/U+0085 raw; str.splitlines would cut such a line in two (two
    broken entries instead of one with its reference text)."""
    manifest = tmp_path / "m.jsonl"
    text = "first\u2028second\u0085third"
    manifest.write_text(json.dumps({"path": "a.flac", "text": text}, ensure_ascii=False) + "\r\n"
                        + json.dumps({"path": "b.flac"}) + "\n", encoding="utf-8")
    entries = list(expand_inputs([str(manifest)]))
    assert [e.error for e in entries] == [None, None]
    assert [Path(e.name).name for e in entries] == ["a.flac", "b.flac"]
    assert entries[0].text == text
