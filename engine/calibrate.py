"""Which compute dtype runs a model fastest on this CPU: measured on the machine, not assumed.

XLA's CPU backend runs bfloat16 at very different rates from one CPU to the next (RESULTS.md:
0.6x float32's matmul rate on an AVX-512 Intel Xeon, faster than float32 on an AMD Zen 5), so
`--dtype auto` on a CPU takes what `whisper-nnx calibrate` measured on this machine:

    whisper-nnx calibrate --model tiny.en     # about a minute for tiny.en: both dtypes compiled and timed

times one window of the model's own program (`Generator.programs.window`: encoder, prompt and
`steps` greedy tokens with the timestamp rules, no end-of-text, so every dtype does the same
work) at `batch` rows, float32 and bfloat16 alternating, best of `repeats`, with random weights
of the model's shapes (the time does not depend on the values: no download). bfloat16 is chosen
when its window takes at most `BFLOAT16_AT_MOST` of float32's (float32 keeps the reference's
numerics; bfloat16 moves word error rates by a few tenths: RESULTS.md). The result is kept in
`<cache root>/cpu-precision.json` (or the file WHISPER_NNX_CPU_PRECISION names; "off": none) under
this machine's key (CPU model and vector flags, cores, JAX version): another machine, or this
one after a JAX upgrade, is float32 until calibrated.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

BFLOAT16_AT_MOST = 0.9  # bfloat16 chosen when its window takes at most this share of float32's
DTYPES = ("float32", "bfloat16")
CHOICES_FILE = "cpu-precision.json"
CHOICES_ENV = "WHISPER_NNX_CPU_PRECISION"
# the flags that decide XLA CPU's float rates (vector width, bf16/fp16/int8 dot instructions)
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
                "amx_bf16", "amx_tile", "asimd", "sve", "bf16")


def machine_key() -> str:
    """This machine as its float rates depend on it: CPU model, vector flags, usable cores and
    the JAX version, e.g. "AMD EPYC | avx2 avx512_bf16 avx512f fma | 2 cores | jax 0.10.2"."""
    import jax

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags |= set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} | {' '.join(sorted(flags & set(VECTOR_FLAGS)))} | {cores} cores | jax {jax.__version__}"


def choices_path() -> Optional[Path]:
    """WHISPER_NNX_CPU_PRECISION (a file; off/none/0/empty: no measured choice, float32), else
    `<cache root>/cpu-precision.json`."""
    value = os.environ.get(CHOICES_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "0") else Path(value).expanduser()
    from .checkpoints.hub import cache_root
    return cache_root() / CHOICES_FILE


def measured_choice(model: str, path: Optional[Path] = None) -> Optional[dict]:
    """What `calibrate` measured for `model` on this machine ({"dtype", "seconds", ...}), None
    when it has not been run here (or ran under another JAX, core count or CPU)."""
    path = path or choices_path()
    if path is None:
        return None
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    found = choices.get(machine_key(), {}).get(model) if isinstance(choices, dict) else None
    return found if isinstance(found, dict) and found.get("dtype") in DTYPES else None


def choose(seconds: dict[str, float]) -> str:
    """bfloat16 when its window took at most BFLOAT16_AT_MOST of float32's, else float32."""
    return "bfloat16" if seconds["bfloat16"] <= BFLOAT16_AT_MOST * seconds["float32"] else "float32"


def window_timer(model_name: str, dtype: str, batch: int, steps: int, prompt: int = 3) -> Callable[[], float]:
    """A function timing one window of `model_name`'s shapes in `dtype` (compiled on the first call)."""
    import jax
    import jax.numpy as jnp

    from .decode.generate import Generator
    from .decode.logit_rules import LogitRules
    from .decode.programs import DecodeConfig, RowSpec
    from .decode.strategies import Greedy
    from .decode.tokenizer import N_TIMESTAMPS
    from .model.config import DIMS
    from .model.whisper import build_model

    dims = DIMS[model_name]
    generator = Generator(build_model(dims, dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(dtype)))
    first_timestamp = dims.n_vocab - N_TIMESTAMPS
    config = DecodeConfig(rules=LogitRules(sample_begin=prompt, eot=-1, no_timestamps=first_timestamp - 1,
                                           timestamp_begin=first_timestamp), sample_len=steps)
    mel = jax.random.normal(jax.random.key(0), (batch, dims.n_mels, 2 * dims.n_audio_ctx), jnp.float32)
    tokens = jnp.zeros((batch, prompt), jnp.int32)
    rows = RowSpec(jnp.zeros((batch,), jnp.int32), jnp.full((batch,), steps, jnp.int32),
                   jnp.zeros((batch,), jnp.int32), jnp.arange(batch, dtype=jnp.int32))

    def timed() -> float:
        start = time.perf_counter()
        out = generator.programs.window(generator.state, mel, tokens, rows, jax.random.PRNGKey(0), jnp.float32(0.0),
                                        config=config, strategy=Greedy())
        jax.block_until_ready(out)
        return time.perf_counter() - start

    return timed


def calibrate(model: str = "tiny.en", batch: int = 8, steps: int = 64, repeats: int = 3,
              path: Optional[Path] = None, report: Callable[[str], None] = print) -> dict:
    """Time both dtypes (compiled first, then `repeats` rounds alternating), keep the best of
    each, choose, and store the result under this machine's key; returns the stored entry."""
    path = path or choices_path()
    if path is None:
        raise ValueError(f"{CHOICES_ENV} is off: calibrate has nowhere to keep its result")
    timers = {}
    for dtype in DTYPES:
        timers[dtype] = window_timer(model, dtype, batch, steps)
        report(f"{dtype}: compiled in {timers[dtype]():.1f} s")
    best = {dtype: float("inf") for dtype in DTYPES}
    for round_ in range(repeats):
        for dtype in (DTYPES if round_ % 2 == 0 else DTYPES[::-1]):
            best[dtype] = min(best[dtype], timers[dtype]())
    entry = {"dtype": choose(best), "seconds": best, "batch": batch, "steps": steps, "repeats": repeats,
             "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        choices = {}
    choices.setdefault(machine_key(), {})[model] = entry
    from .files import atomic_write_text
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(choices, indent=1) + "\n")
    for dtype in DTYPES:
        report(f"{dtype}: {best[dtype]:.3f} s a window ({batch} rows, {steps} tokens), "
               f"{best[dtype] / best['float32']:.2f}x float32's")
    report(f"--dtype auto on this CPU: {entry['dtype']} for {model} (written to {path})")
    return entry


def calibrate_command(args) -> int:
    """`whisper-nnx calibrate` (cli.py's parser): ValueError for a model name or backend it cannot time."""
    import jax

    from .model.config import DIMS

    if args.model not in DIMS:
        raise ValueError(f"calibrate --model takes a model name ({', '.join(sorted(DIMS))}), got {args.model!r}")
    if jax.default_backend() != "cpu":
        raise ValueError(f"calibrate measures CPUs; JAX runs on {jax.default_backend()} here (--dtype auto "
                         "follows the accelerator's kind there): run it with JAX_PLATFORMS=cpu")
    calibrate(args.model, batch=args.batch_size, steps=args.steps, repeats=args.repeats)
    return 0
