"""The encoder's long-attention kernels against the plain softmax formulation (and numpy)."""

from __future__ import annotations

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from simulated_devices import run_on_8_devices

from whisper_nnx.engine.model import attention_kernels
from whisper_nnx.engine.model.attention_kernels import attend, check_kernel, resolve_kernel, tiled_attention
from whisper_nnx.engine.model.config import ModelDims
from whisper_nnx.engine.model.whisper import build_model


def _qkv(b: int, t: int, h: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, h, d)).astype(np.float32)
    k = rng.standard_normal((b, h, t, d)).astype(np.float32)
    v = rng.standard_normal((b, h, t, d)).astype(np.float32)
    return q, k, v


def _numpy_attention(q, k, v):
    """float64 softmax(q k^T / sqrt(d)) v, q [B, T, H, K], k/v [B, H, S, K] -> [B, T, H, K]."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    scores = np.einsum("bthk,bhsk->bhts", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bhsk->bthk", weights, v)


@pytest.mark.parametrize("t,block", [(1500, 750), (37, 16), (300, 300), (301, 100)])
def test_tiled_equals_softmax_attention(t, block):
    q, k, v = _qkv(2, t, 3, 16)
    want = _numpy_attention(q, k, v)
    got = np.asarray(jax.jit(tiled_attention, static_argnums=3)(q, k, v, block))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(attend(jnp.asarray(q), k, v, None)), want, atol=2e-5, rtol=1e-4)


def test_tiled_handles_large_scores_and_bfloat16():
    q, k, v = _qkv(1, 200, 2, 64, seed=1)
    q *= 12.0  # scores in the hundreds: the max subtraction keeps exp finite
    want = _numpy_attention(q, k, v)
    got = np.asarray(tiled_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 64))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    half = tiled_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), 64)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), want, atol=0.1)


def test_auto_choice_per_backend_and_override():
    assert resolve_kernel(jnp.float32, "cpu") == "tiled"
    assert resolve_kernel(jnp.bfloat16, "gpu") == "cudnn"
    assert resolve_kernel(jnp.float32, "gpu") == "dense"
    assert resolve_kernel(jnp.bfloat16, "tpu") == "dense"
    assert resolve_kernel(jnp.float32, "cpu", "dense") == "dense"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        check_kernel("flash3")


_DIMS = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                  n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=4, n_text_layer=2)


@pytest.mark.slow  # compiles two encoders
def test_encoder_is_the_same_with_either_kernel():
    models = {name: build_model(_DIMS, attention_kernel=name) for name in ("dense", "tiled")}
    mel = np.random.default_rng(2).standard_normal((2, 80, 3000)).astype(np.float32)
    outputs = {name: np.asarray(nnx.jit(lambda m, x: m.encoder(x))(model, mel)) for name, model in models.items()}
    np.testing.assert_allclose(outputs["tiled"], outputs["dense"], atol=1e-4, rtol=1e-4)
    assert not hasattr(attention_kernels, "_state")  # no process-wide choice left to leak


def _encoder_primitives(model) -> set[str]:
    """Names of the primitives in the jaxpr of `model`'s encoder on one window."""
    graphdef, state = nnx.split(model)
    mel = jax.ShapeDtypeStruct((1, 80, 3000), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda st, x: nnx.merge(graphdef, st).encode(x))(state, mel)
    names: set[str] = set()

    def walk(jaxpr):  # into the bodies of jit, scan, shard_map, cond branches
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for param in eqn.params.values():
                for inner in param if isinstance(param, (tuple, list)) else (param,):
                    inner = getattr(inner, "jaxpr", inner)  # ClosedJaxpr -> Jaxpr
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    return names


@pytest.mark.slow  # builds four models
def test_each_model_traces_its_own_kernel(monkeypatch):
    """The kernel is a setting of the model, not of the process: two models built with different
    settings keep them, whatever the environment says when their programs are traced. The tiled
    kernel is a `lax.map` (a scan) over rows, heads and query blocks; the dense one has none."""
    monkeypatch.setenv("WHISPER_NNX_ATTENTION", "dense")
    from_env = build_model(_DIMS)  # the environment variable is the default, read at build time
    tiled = build_model(_DIMS, attention_kernel="tiled")
    monkeypatch.setenv("WHISPER_NNX_ATTENTION", "tiled")  # too late for `from_env`
    dense = build_model(_DIMS, attention_kernel="dense")
    assert (from_env.attention_kernel, tiled.attention_kernel, dense.attention_kernel) == ("dense", "tiled", "dense")
    assert {block.attn.attention_kernel for block in tiled.encoder.blocks} == {"tiled"}
    assert "scan" in _encoder_primitives(tiled)
    assert "scan" not in _encoder_primitives(dense)
    assert "scan" not in _encoder_primitives(from_env)
    assert build_model(_DIMS).attention_kernel == "tiled"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        build_model(_DIMS, attention_kernel="flash3")
    monkeypatch.setenv("WHISPER_NNX_ATTENTION", "flash3")
    with pytest.raises(ValueError, match="WHISPER_NNX_ATTENTION='flash3'"):
        build_model(_DIMS)


@pytest.mark.slow
@pytest.mark.parametrize("explicit", [False, True])
def test_sharded_tiled_attention_equals_unsharded(explicit):
    """On 8 simulated devices, per-shard tiles (batch over data, heads over model) = one device."""
    code = textwrap.dedent(f"""
        import json, jax, numpy as np
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec as P
        from whisper_nnx.engine.model.attention_kernels import long_attention, tiled_attention
        from whisper_nnx.sharding import rules_for
        from whisper_nnx.sharding.mesh import make_mesh
        rng = np.random.default_rng(0)
        q = rng.standard_normal((4, 300, 6, 8)).astype(np.float32)
        k = rng.standard_normal((4, 6, 300, 8)).astype(np.float32)
        v = rng.standard_normal((4, 6, 300, 8)).astype(np.float32)
        want = np.asarray(tiled_attention(q, k, v, 128))
        errors = {{}}
        for spec, heads_split in (("4x2", P("data", None, "model", None)), ("data=2,model=4", None)):
            mesh = make_mesh(spec, explicit={explicit})
            with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_for("dp+tp")):
                qs = jax.device_put(q, NamedSharding(mesh, heads_split or P("data", None, None, None)))
                got = jax.jit(long_attention)(qs, k, v)
            errors[spec] = float(np.abs(np.asarray(got) - want).max())
        print(json.dumps(errors))
    """)
    errors = json.loads(run_on_8_devices(code, timeout=600).strip().splitlines()[-1])
    assert set(errors) == {"4x2", "data=2,model=4"}  # 6 heads do not split 4 ways: replicated there
    assert max(errors.values()) < 1e-5, errors


def test_beams_sharing_keys_attend_like_repeated_keys():
    """Beam rows (example-major, G per example) over one copy of their example's cross K/V
    equal each row over its own repeated copy."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((6, 1, 3, 8)).astype(np.float32)  # 2 examples x 3 beams, one step
    k = rng.standard_normal((2, 3, 50, 8)).astype(np.float32)
    v = rng.standard_normal((2, 3, 50, 8)).astype(np.float32)
    shared = np.asarray(attend(jnp.asarray(q), k, v, None))
    repeated = np.asarray(attend(jnp.asarray(q), np.repeat(k, 3, axis=0), np.repeat(v, 3, axis=0), None))
    np.testing.assert_allclose(shared, repeated, atol=1e-6)
    np.testing.assert_allclose(shared, _numpy_attention(q, np.repeat(k, 3, 0), np.repeat(v, 3, 0)), atol=2e-5)
    with pytest.raises(ValueError, match="cannot share keys"):
        attend(jnp.asarray(q[:5]), k, v, None)
