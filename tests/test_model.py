"""Model-level properties: logical axis names on every parameter, bfloat16 compute, sharded load."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_sizes import parameter_count
from simulated_devices import run_on_8_devices

from whisper_nnx.engine.audio import load_audio, pad_or_trim
from whisper_nnx.engine.checkpoints.weights import load_model
from whisper_nnx.engine.features import log_mel_spectrogram_jit
from whisper_nnx.engine.model.config import DIMS, ModelDims
from whisper_nnx.engine.model.whisper import Whisper
from whisper_nnx.sharding import AXES, PRESETS


@pytest.mark.slow  # traces large-v3's initialisation (15-30 s)
def test_every_parameter_has_logical_names_from_the_vocabulary():
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: Whisper(DIMS["large-v3"], rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(abstract), is_leaf=lambda x: isinstance(x, nnx.Variable))
    # encoder: 2 convs x (kernel, bias), positions, ln_post (2); 15 per encoder block, 24 per
    # decoder block (cross-attention and its LayerNorm); decoder: embedding, positions, ln (2).
    assert len(leaves) == 7 + 32 * 15 + 32 * 24 + 4
    for path, var in leaves:
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), jax.tree_util.keystr(path)
        assert all(n is None or n in AXES for n in names)
    for preset in PRESETS.values():  # every preset maps every name, so none passes through unmapped
        assert [name for name, _ in preset] == list(AXES)


def test_parameter_counts_match_the_published_sizes():
    from whisper_nnx.engine.checkpoints.names import expected_shapes

    def count(dims: ModelDims) -> int:
        return sum(int(np.prod(s)) for s in expected_shapes(dims).values())

    for name in ("tiny.en", "base", "small", "medium", "large-v3", "large-v3-turbo"):
        assert count(DIMS[name]) == parameter_count(DIMS[name])
    # Published sizes in millions (the reference README), encoder positional table included.
    assert round(count(DIMS["tiny.en"]) / 1e6) == 38
    assert round(count(DIMS["large-v3"]) / 1e6) == 1543
    assert round(count(DIMS["large-v3-turbo"]) / 1e6) == 809


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(real_checkpoint, data_dir):
    _, checkpoint = real_checkpoint
    mel = log_mel_spectrogram_jit(jnp.asarray(pad_or_trim(load_audio(data_dir / "sample_joe.flac")))[None],
                                  n_mels=checkpoint.dims.n_mels)
    tokens = jnp.asarray([[50257, 383, 2068, 7586, 21831]], jnp.int32) if not checkpoint.dims.is_multilingual \
        else jnp.asarray([[50258, 50259, 50359, 50363, 440, 1702, 3699]], jnp.int32)
    f32 = load_model(checkpoint)(mel, tokens)
    bf16 = load_model(checkpoint, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)(mel, tokens)
    assert bf16.dtype == jnp.float32  # logits always come back in float32
    rel = float(jnp.abs(bf16 - f32).max() / jnp.abs(f32).max())
    assert 0 < rel < 0.05  # bfloat16 really ran (nonzero difference) and stayed close
    assert (np.asarray(bf16).argmax(-1) == np.asarray(f32).argmax(-1)).mean() >= 0.8


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType
    from whisper_nnx.engine.checkpoints.hub import offline_package_checkpoint
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.checkpoints.weights import load_model
    from whisper_nnx.sharding import rules_for, logical_spec
    from flax import nnx

    checkpoint = read_checkpoint(offline_package_checkpoint("tiny.en"))
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((4, 80, 3000)).astype(np.float32)
    tokens = rng.integers(0, 50000, (4, 6)).astype(np.int32)
    expected = np.asarray(load_model(checkpoint)(jnp.asarray(mel), jnp.asarray(tokens)))
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    rules = rules_for("dp+tp")
    model = load_model(checkpoint, mesh=mesh, rules=rules)
    fc1 = model.decoder.blocks[0].mlp.fc1_kernel[...]
    assert tuple(fc1.sharding.spec) == (None, "model"), fc1.sharding.spec
    assert fc1.addressable_shards[0].data.shape == (384, 768)  # half of the 1536 columns
    emb = model.decoder.token_embedding[...]
    assert emb.addressable_shards[0].data.shape == (51968 // 2, 384)  # vocab padded to 128s
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        fwd = jax.jit(lambda s, m, t: nnx.merge(graphdef, s)(m, t))
        got = fwd(state, jax.device_put(mel, logical_spec("batch", None, None)), tokens)
    err = float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())
    assert err < 1e-4, err
    print("sharded-ok", err)
""")


@pytest.mark.slow
def test_weights_load_straight_into_shardings_and_compute_the_same():
    assert "sharded-ok" in run_on_8_devices(_SHARDED, timeout=600)


@pytest.mark.parametrize("setting, batch, rows", [(2, 8, 2), (3, 8, 2), (4, 6, 3), (2, 1, 1), (0, 8, 8), (16, 8, 8),
                                                  (5, 7, 1)])
def test_encoder_groups_are_the_largest_divisor_within_the_setting(setting, batch, rows):
    from whisper_nnx.engine.model.whisper import encoder_group

    assert encoder_group(setting, batch) == rows


@pytest.mark.slow  # compiles the encoder
def test_encoding_in_groups_gives_the_whole_batch_features():
    """`encoder_rows` changes how many windows one encoder call holds, not what it computes."""
    from whisper_nnx.engine.model.whisper import build_model, encoder_group

    dims = ModelDims(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2, n_vocab=51864,
                     n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=2)
    mel = jnp.asarray(np.random.default_rng(0).standard_normal((6, 80, 100)).astype(np.float32))
    whole = build_model(dims, encoder_rows=0)
    grouped = build_model(dims, encoder_rows=2)
    assert encoder_group(None, 6) == 2  # the default on one CPU device
    ref = np.asarray(whole.encode(mel))
    np.testing.assert_allclose(np.asarray(grouped.encode(mel)), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda m: grouped.encode(m))(mel)), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="encoder_rows"):
        build_model(dims, encoder_rows=-1)
