"""Does XLA's CPU backend give the same encoder output when one program runs twice at once?

Why a CPU `Transcriber`'s batches take turns on the device (`Transcriber.device_turn`): on
jax 0.10.2 and 0.12.1 (AMD EPYC, AVX2, 2 cores) the encoder program of a random tiny-sized model
(4 layers, 16 windows, two windows per encoder call, the tiled attention: nested `lax.map`s)
gives rows 12 and 14 different outputs when two calls of that one compiled program run at once
from two threads; alone (main thread or another), and beside a different program, every row
equals the same windows encoded two at a time. Run it on a new jax or CPU to see whether two
batches in flight are safe there:

    .venv/bin/python tools/cpu_concurrency_check.py [--layers 4] [--windows 16] [--trials 3]

Prints, per trial, the rows of the concurrent calls that differ from the lone call, and exits 1
when any did (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from whisper_nnx.engine.model.config import DIMS
from whisper_nnx.engine.model.whisper import build_model

WINDOWS_PER_CALL = 2  # the CPU default of `encoder_rows` (ENCODER_ROWS_CPU)


def encoder_program(layers: int):
    """(jitted encode(state, mel [B, 80, 3000]) -> [B, 1500, 384], state) of a random tiny.en-sized
    model with `layers` encoder layers, `WINDOWS_PER_CALL` windows per encoder pass."""
    dims = dataclasses.replace(DIMS["tiny.en"], n_audio_layer=layers, n_text_layer=1)
    graphdef, state = nnx.split(build_model(dims, attention_kernel="tiled").encoder)

    @jax.jit
    def encode(state, mel):
        encoder = nnx.merge(graphdef, state)
        groups = mel.reshape(mel.shape[0] // WINDOWS_PER_CALL, WINDOWS_PER_CALL, *mel.shape[1:])
        out = jax.lax.map(encoder, groups)
        return out.reshape(mel.shape[0], *out.shape[2:])

    return encode, state


def log_mel_like(windows: int, seed: int) -> jax.Array:
    """[windows, 80, 3000] values in log-mel's range."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(-0.2, 0.5, (windows, 80, 3000)).clip(-1, 1.5).astype(np.float32))


def differing_rows(got: jax.Array, expected: np.ndarray, tolerance: float = 1e-4) -> tuple[list[int], float]:
    """(rows of `got` off `expected` by more than `tolerance`, the largest difference)."""
    diff = np.abs(np.asarray(got) - expected).max(axis=(1, 2))
    return np.nonzero(diff > tolerance)[0].tolist(), float(diff.max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args(argv)
    encode, state = encoder_program(args.layers)
    first, second = log_mel_like(args.windows, 1), log_mel_like(args.windows, 2)
    alone = np.asarray(encode(state, first))
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.layers} layers, {args.windows} windows")
    failed = False
    for trial in range(args.trials):
        out: dict[str, jax.Array] = {}

        def run(name: str, mel: jax.Array) -> None:
            out[name] = encode(state, mel).block_until_ready()

        threads = [threading.Thread(target=run, args=item) for item in (("first", first), ("second", second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rows, worst = differing_rows(out["first"], alone)
        failed |= bool(rows)
        print(f"trial {trial}: rows differing from the lone call {rows}, largest difference {worst:.3g}")
    print("two calls at once: " + ("DIFFERENT outputs" if failed else "the same outputs"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
