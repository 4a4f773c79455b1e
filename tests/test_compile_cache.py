"""The persistent compilation cache: where it goes, how it is switched off, and that a second
process loads what the first compiled."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from whisper_nnx.engine import compile_cache

pytestmark = pytest.mark.slow  # fresh interpreters that compile

_PROGRAM = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from whisper_nnx.engine.compile_cache import enable_compilation_cache
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    used = enable_compilation_cache(sys.argv[1])
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0 + jnp.arange(x.shape[0]))
    value = float(f(jnp.ones((64, 64))).sum())
    hits = events.count("/jax/compilation_cache/cache_hits")
    misses = events.count("/jax/compilation_cache/cache_misses")
    print(json.dumps({"used": str(used) if used else None, "value": value, "hits": hits, "misses": misses}))
""")


def _run(directory: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "WHISPER_NNX_COMPILE"))}
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, directory], capture_output=True, text=True,
                          timeout=300, env={**env, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_finds_the_first_ones_programs(tmp_path):
    cache = tmp_path / "jax-cache"
    first = _run(str(cache))
    entries = sorted(p.name for p in cache.iterdir())
    assert first["used"] == str(cache) and entries, "the first run stored nothing"
    assert any(name.startswith("jit__lambda") for name in entries), entries
    second = _run(str(cache))
    assert second["value"] == first["value"] == pytest.approx(64 * 64 * 3 * math.tanh(64) + sum(range(64)))
    assert first["hits"] == 0 and first["misses"] >= 1
    assert second["hits"] >= 1 and second["misses"] == 0  # loaded what the first run compiled


def test_off_disables_and_the_default_follows_the_cache_root(tmp_path, monkeypatch):
    off = _run("off")
    assert off["used"] is None and off["hits"] == off["misses"] == 0  # the cache was never consulted
    monkeypatch.delenv(compile_cache.ENV_DIRECTORY, raising=False)
    monkeypatch.setenv("WHISPER_NNX_CACHE", str(tmp_path / "root"))
    assert compile_cache.cache_directory() == tmp_path / "root" / "jax-compile"
    monkeypatch.setenv(compile_cache.ENV_DIRECTORY, "none")
    assert compile_cache.cache_directory() is None
    monkeypatch.setenv(compile_cache.ENV_DIRECTORY, str(tmp_path / "elsewhere"))
    assert compile_cache.cache_directory() == Path(tmp_path / "elsewhere")
