"""tests/reference_store.py: stored reference results are used only under their exact key."""

from __future__ import annotations

import numpy as np
import reference_store
from reference_store import fingerprint, stored_or_live


def test_fingerprint_sees_samples_dtypes_shapes_files_and_settings(tmp_path):
    audio = np.arange(6, dtype=np.float32)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    base = fingerprint([audio, folder, {"beam_size": 5}])
    assert base == fingerprint([audio.copy(), folder, {"beam_size": 5}])
    changed = audio.copy()
    changed[3] += 1e-6
    assert fingerprint([changed, folder, {"beam_size": 5}]) != base
    assert fingerprint([audio.astype(np.float64), folder, {"beam_size": 5}]) != base
    assert fingerprint([audio.reshape(2, 3), folder, {"beam_size": 5}]) != base
    assert fingerprint([audio, folder, {"beam_size": None}]) != base
    (folder / "model.bin").write_bytes(b"weightz")
    assert fingerprint([audio, folder, {"beam_size": 5}]) != base
    # parts are separated: moving bytes from one part to the next is another key
    assert fingerprint(["ab", "c"]) != fingerprint(["a", "bc"])


def test_stored_results_only_under_their_key(tmp_path, monkeypatch):
    monkeypatch.setattr(reference_store, "STORE", tmp_path)
    monkeypatch.delenv("WHISPER_NNX_LIVE_REFERENCE", raising=False)
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return [{"tokens": [value]}]
        return run

    monkeypatch.delenv("WHISPER_NNX_WRITE_REFERENCE", raising=False)
    assert stored_or_live("x", [1], compute(1)) == ([{"tokens": [1]}], False)
    assert not (tmp_path / "x.json").exists()  # written only when asked
    monkeypatch.setenv("WHISPER_NNX_WRITE_REFERENCE", "1")
    assert stored_or_live("x", [1], compute(1)) == ([{"tokens": [1]}], False)
    monkeypatch.delenv("WHISPER_NNX_WRITE_REFERENCE")
    assert stored_or_live("x", [1], compute(9)) == ([{"tokens": [1]}], True)  # stored: not computed
    assert stored_or_live("x", [2], compute(2)) == ([{"tokens": [2]}], False)  # another key: computed
    monkeypatch.setenv("WHISPER_NNX_LIVE_REFERENCE", "1")
    assert stored_or_live("x", [1], compute(3)) == ([{"tokens": [3]}], False)  # live asked for
    assert calls == [1, 1, 2, 3]
