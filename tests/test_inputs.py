"""Inputs: files, directories and manifests expanded into entries with a stable key."""

from __future__ import annotations

import json

from whisper_nnx.engine.inputs import Entry, expand_inputs


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
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    with Entry("a.wav").open() as handle:
        assert handle.read() == b"RIFF"
