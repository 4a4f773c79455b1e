"""Parameter checks and counts: expected shapes against the hand count (model_sizes.py) and the
reference's state dict, the real checkpoints' sizes, `check_params` messages, and the reference
names round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from checkpoint_files import SMALL
from model_sizes import parameter_count

from whisper_nnx.engine.checkpoints.names import Checkpoint, check_params, expected_shapes
from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError
from whisper_nnx.engine.checkpoints.weights import load_model, model_params
from whisper_nnx.engine.model.config import DIMS, ModelDims
from whisper_nnx.engine.model.whisper import build_model


def reference_count(d: ModelDims) -> int:
    """Persistent state of the reference encoder + decoder (built on the meta device)."""
    with torch.device("meta"):
        encoder = whisper.model.AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state,
                                             d.n_audio_head, d.n_audio_layer)
        decoder = whisper.model.TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state,
                                            d.n_text_head, d.n_text_layer)
    return sum(v.numel() for m in (encoder, decoder) for v in m.state_dict().values())


@pytest.mark.parametrize("name", ["tiny.en", "base", "large-v3-turbo"])
def test_parameter_counts(name):
    dims = DIMS[name]
    counted = sum(int(np.prod(s)) for s in expected_shapes(dims).values())
    assert counted == parameter_count(dims) == reference_count(dims)


@pytest.mark.slow  # expected_shapes of 64 blocks takes ~12 s
def test_large_v3_parameter_count():
    dims = DIMS["large-v3"]
    shapes = expected_shapes(dims)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert total == parameter_count(dims) == reference_count(dims) == 1_543_490_560
    # The reference's nn.Parameters leave out the fixed 1500 x 1280 encoder table (a buffer).
    assert shapes["encoder/positions"] == (1500, 1280)
    assert total - 1500 * 1280 == 1_541_570_560


def test_real_checkpoint_sizes(real_checkpoint):
    name, checkpoint = real_checkpoint
    assert checkpoint.dims == DIMS[name]
    check_params(checkpoint.dims, checkpoint.params)
    assert sum(v.size for v in checkpoint.params.values()) == parameter_count(DIMS[name])


def test_check_params_messages(small_source):
    check_params(SMALL, small_source.params)
    params = dict(small_source.params)
    del params["encoder/blocks/1/mlp_ln/scale"]
    params["decoder/blocks/0/attn/key_bias"] = np.zeros((2, 32), np.float32)
    params["decoder/positions"] = np.zeros((31, 64), np.float32)
    with pytest.raises(CheckpointError) as info:
        check_params(SMALL, params)
    message = str(info.value)
    assert "2+3-layer D=64 V=51864" in message
    assert "missing ['encoder/blocks/1/mlp_ln/scale'] (1)" in message
    assert "unexpected ['decoder/blocks/0/attn/key_bias'] (1)" in message
    assert "decoder/positions (31, 64) != (32, 64)" in message
    with pytest.raises(CheckpointError, match="parameters do not fit"):
        load_model(Checkpoint(SMALL, params, Path("."), "nnx"))


@pytest.mark.slow  # builds a random model
def test_reference_names_round_trip_in_the_reference_layouts():
    """`to_reference_names` gives every tensor of openai-whisper's state dict in its shape, and
    `from_reference_names` takes them back to exactly our parameters."""
    from whisper_nnx.engine.checkpoints.names import from_reference_names, to_reference_names

    params = model_params(build_model(SMALL, seed=3))
    named = to_reference_names(SMALL, params)
    reference_shapes = {k: tuple(v.shape) for k, v in
                        whisper.model.Whisper(whisper.model.ModelDimensions(**SMALL.to_dict())).state_dict().items()
                        if k != "alignment_heads"}
    assert {k: tuple(v.shape) for k, v in named.items()} == reference_shapes
    back = from_reference_names(SMALL, named)
    assert set(back) == set(params)
    for path, array in params.items():
        np.testing.assert_array_equal(back[path], array, err_msg=path)
