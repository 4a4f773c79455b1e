"""Inputs: files, directories and manifests expanded into entries with a stable key."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pytest

from whisper_nnx.engine.audio import AudioDecodeError, load_audio
from whisper_nnx.engine.inputs import Entry, expand_inputs

CLIP = Path(__file__).parent / "data" / "corpus" / "joe_cat.flac"


def test_expand_files_directories_and_manifests(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    for name in ("b/two.flac", "one.WAV", "notes.md", "b/three.mp4"):
        (folder / name).write_bytes(b"x")
    txt = tmp_path / "list.txt"
    txt.write_text("a.wav\n  # a comment with leading spaces\n\n  spaced.flac  \n# another\n")
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"path": "x.wav", "speaker": 3}) + "\n\n" + json.dumps({"file": "y.wav"}) + "\n"
                     + "[1, 2\n" + json.dumps(["not", "an", "object"]) + "\n" + json.dumps({"path": ""}) + "\n")
    entries = list(expand_inputs([str(folder), str(txt), str(jsonl), "missing.ogg"]))
    names = [e.name for e in entries]
    assert names == [str(folder / "b/three.mp4"), str(folder / "b/two.flac"), str(folder / "one.WAV"),
                     "a.wav", "spaced.flac", "x.wav", f"{jsonl}:3", f"{jsonl}:4", f"{jsonl}:5", f"{jsonl}:6",
                     "missing.ogg"]
    errors = {e.name: e.error for e in entries if e.error is not None}
    assert sorted(errors) == [f"{jsonl}:{n}" for n in (3, 4, 5, 6)]
    assert "not JSON" in errors[f"{jsonl}:4"] and '"path"' in errors[f"{jsonl}:3"]


def test_keys_identify_the_file_however_it_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Entry("a.wav").key == Entry("./a.wav").key == Entry(str(tmp_path / "a.wav")).key
    assert Entry("a.wav").key != Entry("b/a.wav").key


def test_entries_are_decoded_from_their_path_url_span_or_error(tmp_path, monkeypatch):
    """What the engine decodes (`Entry.source()`): a plain local file's path; any other entry
    itself, its audio opened on the decoding thread (a URL through fsspec), cut to its span; an
    entry that names no audio fails with its own reason."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.flac").write_bytes(CLIP.read_bytes())
    clip = load_audio(CLIP)
    assert Entry("a.flac").source() == "a.flac"
    np.testing.assert_array_equal(load_audio(Entry("a.flac").source()), clip)
    fsspec.filesystem("memory").pipe("/inputs-test/a.flac", CLIP.read_bytes())
    url = Entry("memory://inputs-test/a.flac")
    assert url.source() is url
    np.testing.assert_array_equal(load_audio(url.source()), clip)
    span = Entry("a.flac#t=0.5,1.25", opener=lambda: "a.flac", offset_s=0.5, duration_s=0.75)
    np.testing.assert_array_equal(load_audio(span.source()), clip[8000:20000])
    bad = Entry("m.jsonl:3", "m.jsonl:3: manifest line is not JSON (Expecting value)")
    assert bad.source() is bad
    with pytest.raises(AudioDecodeError) as err:
        load_audio(bad.source())
    assert str(err.value) == "m.jsonl:3: manifest line is not JSON (Expecting value)"
    with pytest.raises(AudioDecodeError, match="^memory://inputs-test/b.flac: file not found$"):
        load_audio(Entry("memory://inputs-test/b.flac").source())
