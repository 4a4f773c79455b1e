"""Our converted form (`save_converted`): round trips from transformers files and from the real
tiny.en, in float32 and bfloat16, and a failed save that leaves the previous checkpoint whole."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from checkpoint_files import ALIGNMENT_HEADS, SMALL, assert_params_equal, hf_tensors, logits_of, write_hf_dir

from whisper_nnx.engine.checkpoints.formats import read_checkpoint, save_converted
from whisper_nnx.engine.checkpoints.names import Checkpoint
from whisper_nnx.engine.checkpoints.weights import load_model
from whisper_nnx.engine.model.config import DIMS


def test_save_converted_round_trip(small_source, tmp_path):
    hf_dir = write_hf_dir(tmp_path / "hf", hf_tensors(small_source.ref_state, SMALL), SMALL,
                          heads=ALIGNMENT_HEADS)
    (hf_dir / "tokenizer.json").write_text('{"version": "1.0", "marker": 17}')
    original = read_checkpoint(hf_dir)
    out = save_converted(original, tmp_path / "converted")
    assert json.loads((out / "whisper_nnx.json").read_text())["source_format"] == "hf"
    assert (out / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    reloaded = read_checkpoint(out)
    assert reloaded.source_format == "nnx"
    assert reloaded.dims == SMALL
    assert reloaded.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(reloaded.params, small_source.params)
    np.testing.assert_array_equal(logits_of(load_model(reloaded), small_source), small_source.logits)

    bf16 = read_checkpoint(save_converted(original, tmp_path / "bf16", dtype="bfloat16"))
    assert bf16.dims == SMALL and bf16.alignment_heads == ALIGNMENT_HEADS
    assert_params_equal(bf16.params, small_source.params, dtype=ml_dtypes.bfloat16)


def test_save_converted_real_tiny_en(tiny_en_checkpoint, tmp_path):
    reloaded = read_checkpoint(save_converted(tiny_en_checkpoint, tmp_path / "tiny"))
    assert reloaded.dims == tiny_en_checkpoint.dims == DIMS["tiny.en"]
    assert reloaded.alignment_heads == tiny_en_checkpoint.alignment_heads
    assert_params_equal(reloaded.params, tiny_en_checkpoint.params)
    assert (tmp_path / "tiny" / "tokenizer.json").read_bytes() == \
        (tiny_en_checkpoint.directory / "tokenizer.json").read_bytes()


def test_failed_save_leaves_the_previous_checkpoint(small_source, tmp_path):
    checkpoint = Checkpoint(SMALL, dict(small_source.params), tmp_path, "hf", ALIGNMENT_HEADS)
    out = save_converted(checkpoint, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = Checkpoint(SMALL, {**small_source.params, "decoder/ln/bias": np.zeros(SMALL.n_text_state, complex)},
                     tmp_path, "hf")
    with pytest.raises(ValueError, match="decoder/ln/bias"):
        save_converted(bad, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files either
    assert_params_equal(read_checkpoint(out).params, small_source.params)
