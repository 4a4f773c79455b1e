"""FLOP counts against arithmetic written out by hand, against the parameter shapes of the actual
model (2 FLOPs per weight per position), and against XLA's cost analysis of the jitted pieces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from whisper_nnx.engine.model import flops
from whisper_nnx.engine.model.config import DIMS, ModelDims
from whisper_nnx.engine.model.whisper import Whisper

TINY = DIMS["tiny.en"]  # D 384, 6 heads, 4 + 4 blocks, 80 mels, V 51864


def test_tiny_encoder_by_hand():
    s, n = 1500, 3000
    conv1 = 2 * n * 3 * 80 * 384  # 3000 frames, kernel 3 x 80 mels -> 384
    conv2 = 2 * s * 3 * 384 * 384  # 1500 outputs (stride 2), kernel 3 x 384 -> 384
    assert (conv1, conv2) == (552_960_000, 1_327_104_000)
    qkvo = 4 * (2 * s * 384 * 384)  # four 384 x 384 maps over 1500 positions
    scores = 6 * (2 * s * s * 64)  # 6 heads of [1500, 64] x [64, 1500]
    probs_v = 6 * (2 * s * s * 64)  # 6 heads of [1500, 1500] x [1500, 64]
    mlp = 2 * s * 384 * 1536 + 2 * s * 1536 * 384
    block = qkvo + scores + probs_v + mlp
    assert block == 8_764_416_000
    assert flops.encoder_parts(TINY) == {"conv": conv1 + conv2, "projections": 4 * qkvo,
                                         "attention": 4 * (scores + probs_v), "mlp": 4 * mlp}
    assert flops.encoder_flops(TINY) == conv1 + conv2 + 4 * block == 36_937_728_000


def test_large_v3_encoder_by_hand():
    """D 1280, 20 heads, 32 blocks, 128 mels: 2.27 TFLOP per window."""
    conv = 2 * 3000 * 3 * 128 * 1280 + 2 * 1500 * 3 * 1280 * 1280
    block = 24 * 1500 * 1280**2 + 4 * 1500**2 * 1280  # 58.98e9 in dense maps + 11.52e9 attention
    assert flops.encoder_flops(DIMS["large-v3"]) == conv + 32 * block == 2_273_771_520_000
    assert flops.encoder_flops(DIMS["large-v3-turbo"]) == flops.encoder_flops(DIMS["large-v3"])


def _tiny_token(attended: int) -> int:
    """One tiny.en decoder token by hand: per block self q, k, v, out + self attention over
    `attended` positions + cross q, out + cross attention over 1500 + MLP; then logits."""
    d, s = 384, 1500
    block = (4 * 2 * d * d) + (2 * 2 * attended * d) + (2 * 2 * d * d) + (2 * 2 * s * d) + (2 * d * 4 * d * 2)
    return 4 * block + 2 * d * 51864


def test_tiny_decoder_by_hand():
    assert _tiny_token(1) == 4 * (1_179_648 + 1_536 + 589_824 + 2_304_000 + 2_359_296) + 39_831_552
    assert flops.token_flops(TINY, attended=1) == _tiny_token(1) == 65_568_768
    assert flops.token_flops(TINY, attended=7, logits=False) == _tiny_token(7) - 2 * 384 * 51864
    # prompt of 3 (positions 0, 1, 2 see 1, 2, 3 keys), then steps at positions 3 and 4
    prefill = _tiny_token(1) + _tiny_token(2) + _tiny_token(3)
    assert flops.prefill_flops(TINY, 3) == prefill
    assert flops.decoder_flops(TINY, steps=2, prompt=3) == prefill + _tiny_token(4) + _tiny_token(5)
    assert flops.cross_kv_flops(TINY) == 4 * 2 * (2 * 1500 * 384 * 384) == 3_538_944_000


def test_cache_length_counts_the_whole_cache():
    """The engine's jitted step attends over every allocated position under a mask."""
    assert flops.decoder_flops(TINY, steps=2, prompt=3, cache_length=10) == 5 * _tiny_token(10)
    assert flops.decoder_flops(TINY, steps=2, prompt=3, cache_length=10) - flops.decoder_flops(TINY, 2, 3) == \
        4 * 4 * 384 * ((10 - 1) + (10 - 2) + (10 - 3) + (10 - 4) + (10 - 5))


def test_window_summary():
    w = flops.window_flops(TINY, steps=4, prompt=1)
    assert (w.encoder, w.cross_kv, w.prompt, w.steps) == (36_937_728_000, 3_538_944_000, 1, 4)
    assert w.prefill == _tiny_token(1)
    assert w.decode == _tiny_token(2) + _tiny_token(3) + _tiny_token(4) + _tiny_token(5)
    assert w.per_step == w.decode / 4
    assert w.decoder == w.cross_kv + w.prefill + w.decode
    assert w.total == w.encoder + w.decoder
    assert "| tiny.en | 36.9 | 3.5 |" in flops.flops_table(["tiny.en"])


def test_rejects_impossible_windows():
    with pytest.raises(ValueError):
        flops.token_flops(TINY, attended=0)
    with pytest.raises(ValueError):
        flops.decoder_flops(TINY, steps=446, prompt=3)  # 449 positions > n_text_ctx 448
    with pytest.raises(ValueError):
        flops.decoder_flops(TINY, steps=5, prompt=3, cache_length=7)
    with pytest.raises(ValueError):
        flops.encoder_flops(TINY, audio_positions=1501)


def _kernel_sizes(module) -> int:
    """Weights of every `*_kernel` parameter under `module` (biases are elementwise adds)."""
    return sum(leaf.size for path, leaf in nnx.to_flat_state(nnx.state(module, nnx.Param))
               if str(path[-1]).endswith("_kernel"))


@pytest.mark.parametrize("name", ["tiny.en", "base", "small", "medium", "large-v3", "large-v3-turbo"])
def test_two_flops_per_weight_per_position(name):
    """Independent of the formulas: each position costs 2 FLOPs per kernel weight the model
    actually holds (read from the abstract model's shapes), plus attention."""
    dims = DIMS[name]
    with nnx.use_eager_sharding(False):
        model = Whisper(dims, rngs=None)  # shapes only, no memory
    s, enc = dims.n_audio_ctx, model.encoder
    parts = flops.encoder_parts(dims)
    assert parts["projections"] + parts["mlp"] == 2 * s * _kernel_sizes(enc.blocks)
    assert parts["conv"] == 2 * (2 * s) * enc.conv1_kernel.size + 2 * s * enc.conv2_kernel.size
    assert parts["attention"] == dims.n_audio_layer * 4 * s * s * dims.n_audio_state

    dec, d = model.decoder, dims.n_text_state
    cross_kv_weights = sum(b.cross_attn.key_kernel.size + b.cross_attn.value_kernel.size for b in dec.blocks)
    assert flops.cross_kv_flops(dims) == 2 * s * cross_kv_weights
    attention = dims.n_text_layer * 4 * d * (1 + s)  # a first token sees itself and the audio
    per_token = 2 * (_kernel_sizes(dec.blocks) - cross_kv_weights) + attention + 2 * d * dims.n_vocab
    assert flops.token_flops(dims, attended=1) == per_token


def _abstract_split(dims: ModelDims):
    with nnx.use_eager_sharding(False):
        return nnx.split(Whisper(dims, rngs=None))


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"])


@pytest.fixture
def dense_attention(monkeypatch):
    """The plain attention for the encoder of models built in the test (the environment variable
    is the default of a model's `attention_kernel`). XLA's cost analysis counts a loop body once,
    not once per trip, so the CPU's tiled kernel (a `lax.map` over rows, heads and query blocks)
    would hide all but one block's attention FLOPs from it."""
    monkeypatch.setenv("WHISPER_NNX_ATTENTION", "dense")


@pytest.mark.slow  # compiles tiny's encoder
@pytest.mark.usefixtures("dense_attention")
def test_xla_counts_the_same_encoder():
    """XLA counts every matmul as we do plus the elementwise work we leave out. For tiny that is
    about 1.0 GFLOP on top of 36.9 (2.8 %): softmax at ~5 FLOPs per score (54 M scores), exact
    GELU at ~64 (XLA:CPU expands erf into a polynomial; 10.9 M activations), LayerNorm and bias
    adds. So XLA must be at least our count and within 5 % above it."""
    graphdef, state = _abstract_split(TINY)
    mel = jax.ShapeDtypeStruct((1, TINY.n_mels, 3000), jnp.float32)
    xla = _xla_flops(lambda st, m: nnx.merge(graphdef, st).encode(m), state, mel)
    ours = flops.encoder_flops(TINY)
    assert ours <= xla <= 1.05 * ours, xla / ours


@pytest.mark.slow  # compiles tiny's prefill and step
def test_xla_counts_the_same_decoder():
    """Prefill (cross K/V + 3 prompt tokens) and one step against a 40-position cache, counted as
    the engine runs them (attention over the whole cache). XLA also counts the 104 padding rows
    of the vocabulary (0.1 % of a step) and the elementwise work: within 2 % above ours."""
    graphdef, state = _abstract_split(TINY)
    prompt, cache_length = 3, 40
    features = jax.ShapeDtypeStruct((1, 1500, 384), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, prompt), jnp.int32)
    prefill = lambda st, f, t: nnx.merge(graphdef, st).prefill(f, t, cache_length)
    xla = _xla_flops(prefill, state, features, tokens)
    ours = flops.cross_kv_flops(TINY) + flops.prefill_flops(TINY, prompt, cache_length=cache_length)
    assert ours <= xla <= 1.02 * ours, xla / ours

    _, cache = jax.eval_shape(prefill, state, features, tokens)
    step = lambda st, t, o, c: nnx.merge(graphdef, st).decode_step(t, o, c)
    xla = _xla_flops(step, state, jax.ShapeDtypeStruct((1, 1), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32),
                     cache)
    ours = flops.token_flops(TINY, attended=cache_length)
    assert ours <= xla <= 1.02 * ours, xla / ours


def test_step_bytes_by_hand():
    """tiny.en (D 384, 4 decoder layers, V 51864, S 1500), float32, batch 16, 100 positions seen:
    weights 4 layers x (self q, k, v, out 4 D^2 + cross q, out 2 D^2 + MLP 8 D^2) + V D, per row
    4 layers x K and V x D x (1500 + 100)."""
    d = 384
    weights = 4 * (14 * d * d) + 51864 * d
    per_row = 4 * 2 * d * (1500 + 100)
    assert flops.step_bytes(DIMS["tiny.en"], 16, 100) == 4 * (weights + 16 * per_row)
    assert flops.step_bytes(DIMS["tiny.en"], 1, 100, bytes_per_value=2) == 2 * (weights + per_row)
    # about 430 MB at batch 16: cross K/V (295 MB) and the table (80 MB) dominate
    assert 4.2e8 < flops.step_bytes(DIMS["tiny.en"], 16, 100) < 4.4e8

