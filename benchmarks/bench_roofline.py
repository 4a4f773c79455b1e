"""Roofline benchmark: the FLOPs of a window (engine/model/flops.py) over measured time, as a fraction of
this machine's matmul ceiling measured in the same run, for the encoder and the decoder.

    .venv/bin/python benchmarks/bench_roofline.py --model tiny.en --batch-sizes 1,4 [--results-md]

(a) Ceilings, measured before and after the model (the better of the two counts: on a shared
    machine the load moves between them):
      matmul     jitted `a @ b` on square [n, n] operands for each --matmul-sizes n and --dtypes
                 dtype (float32 accumulation; int8: int32), best of --ceiling-repeats: 2 n^3 FLOPs / seconds;
                 a dtype's ceiling is its best size.
      bandwidth  jitted float32 matrix-vector product over a --matvec-mib MiB matrix: matrix bytes /
                 seconds (the ceiling that a batch-1 decode step, 0.5 FLOP per weight byte, meets).
(b) Phases: the engine's own compiled programs (`Generator.programs`, greedy, the logit rules of
    transcription with no end-of-text), compiled ahead of time (compile time apart), timed with
    `block_until_ready` after a warm-up call:
      encoder   programs.encode(mel [B, M, 3000]) -> [B, 1500, D]
      prefill   programs.prefill: cross K/V of every block + the P prompt tokens (cache C = P + steps)
      steps     --steps greedy single-token steps of the engine's decode loop (programs.steps:
                lax.while_loop, logit rules, argmax); the decoder window's time minus the prefill's
      decoder   prefill + steps: one window's decoding
    FLOPs: `flops.py`'s useful count times B (self-attention over the positions a token can see;
    the engine's step attends over all C under a mask: the record has that count too).
(c) Achieved GFLOP/s = FLOPs / best time (best, like the ceiling: on a shared machine the best
    repeat is the steadiest estimate of what the code can do) and its fraction of the matmul
    ceiling of the model's dtype; medians are in the table and the record. GB/s = XLA's "bytes
    accessed" of the compiled phase / best time, against the matvec ceiling. XLA sums the operand
    and result bytes of every operation, an upper bound of the memory traffic (for a tiny.en step
    165 MB against ~131 MB of weights and caches), and counts a loop body once, not per trip: so
    GB/s is shown only where XLA's FLOPs reach ours (not for the CPU's tiled encoder attention).

(d) Targets (the throughput issue's): the encoder at >= 70% of the matmul ceiling, and a decode
    step at batch 16 within 1.5x of its memory floor: `flops.step_bytes` (decoder weights, the
    vocabulary table, each row's cross-attention K/V and the self-attention positions seen, on
    average P + steps / 2) over the matvec ceiling. Every batch gets its row; the verdict is
    given where the target applies.

--model names a checkpoint (`resolve_model` + `read_checkpoint` + `load_model`) or, with
--weights random (or auto when no checkpoint resolves), a preset of `config.DIMS` with random
weights: speed does not depend on the values, so any size is measured without its download.
Token ids do not change the work either: prompts are token 0.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Optional

from common import (  # the script's own folder is on sys.path
    PLATFORMS,
    REPO,
    VERDICT,
    Timing,
    aot_compile,
    git_info,
    machine_info,
    machine_title,
    notes,
    peak_rss_bytes,
    record,
    report_fields,
    select_device,
    time_calls,
    update_results_md,
    write_record,
)

# RESULTS.md: the subsection title and the paragraphs around the tables (fields: `_section`).
SUBSECTION = "roofline, {model} {model_dtype}, {commit_label}"
REPORT = (
    "`{command}`; {versions}, backend {backend}; {model} ({weights} weights) in {model_dtype}; "
    "prompt {prompt} tokens, {steps} greedy steps; phases best of {repeats}, ceilings best of {ceiling_repeats}, "
    "after warm-up; load average {load_avg:.1f} at the start. Record: `{record}`.")
CEILINGS = "Ceilings (best of before and after): matmul {matmul}; matvec {matvec:.1f} GB/s."
MATMUL = "{dtype} {gflops:.1f} GFLOP/s"
BEFORE, AFTER = "Before the model:", "After:"
PHASES = (
    "FLOPs from `whisper_nnx.engine.model.flops` (matmuls only, useful work: self-attention over visible "
    "positions); GFLOP/s = FLOPs / best time, over the matmul ceiling of the model's dtype; GB/s = XLA's bytes "
    "accessed / best time, over the matvec ceiling (`-` where XLA's cost analysis misses loop trips); `steps` = "
    "decoder window minus prefill.")
TARGETS = (
    "Targets: the encoder at >= 70% of the matmul ceiling; a decode step at batch 16 within 1.5x of its memory "
    "floor, `flops.step_bytes` (decoder weights, vocabulary table, each row's cross K/V and the self-attention "
    "positions seen, on average P + steps / 2) over the matvec ceiling.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda spec: [int(x) for x in spec.split(",") if x.strip()]  # noqa: E731
    names = lambda spec: [x.strip() for x in spec.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--model", default="tiny.en", help="checkpoint name or path, or a config.DIMS preset")
    p.add_argument("--weights", choices=("auto", "real", "random"), default="auto",
                   help="auto: the checkpoint if it resolves, else random weights of the preset")
    p.add_argument("--model-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute and parameter dtype of the model")
    p.add_argument("--batch-sizes", type=ints, default="1,4")
    p.add_argument("--prompt", type=int, default=3, help="P prompt tokens (sot, language, task)")
    p.add_argument("--steps", type=int, default=64, help="greedy decode steps after the prefill")
    p.add_argument("--encoder-rows", type=int, default=None,
                   help="windows per encoder call (the model's encoder_rows; 0: the whole batch; "
                        "default: the engine's)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls of each phase after one warm-up call")
    p.add_argument("--matmul-sizes", type=ints, default="1024,2048")
    p.add_argument("--dtypes", type=names, default="float32",
                   help="ceiling dtypes: float32, bfloat16, int8 (int8 x int8 -> int32)")
    p.add_argument("--ceiling-repeats", type=int, default=5)
    p.add_argument("--matvec-mib", type=int, default=256, help="array size of the bandwidth ceiling")
    p.add_argument("--device", choices=("auto", *PLATFORMS), default="auto")
    p.add_argument("--results-md", action="store_true", help="write a section of benchmarks/RESULTS.md")
    p.add_argument("--note", action="append", default=[], help="a sentence for RESULTS.md (repeatable)")
    return p.parse_args(argv)


# --- (a) ceilings -------------------------------------------------------------------------------

def matmul_ceiling(sizes: list[int], dtype_name: str, repeats: int) -> list[dict]:
    """Best-of-`repeats` GFLOP/s of a jitted [n, n] @ [n, n] per size n."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype_name)
    integer = jnp.issubdtype(dtype, jnp.integer)  # int8: int8 x int8 -> int32, ops counted as FLOPs
    fn = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.int32 if integer else jnp.float32))
    rows = []
    for n in sizes:
        a, b = (jax.random.randint(jax.random.key(i), (n, n), -127, 128).astype(dtype) if integer else
                jax.random.normal(jax.random.key(i), (n, n), jnp.float32).astype(dtype) for i in (0, 1))
        timing = time_calls(functools.partial(fn.lower(a, b).compile(), a, b), repeats)
        rows.append({"dtype": dtype_name, "n": n, "flops": 2 * n**3, **timing.to_json(),
                     "gflops": 2 * n**3 / timing.min / 1e9})
    return rows


def bandwidth_ceiling(mib: int, repeats: int) -> dict:
    """Best-of-`repeats` GB/s of a jitted float32 matrix-vector product [4096, n] @ [n] over a matrix
    of `mib` MiB: each weight read once for 2 FLOPs, the pattern of a batch-1 decode step. (An
    elementwise `2 x + 1` measured page faults of its fresh output here, 10x below this.)"""
    import jax
    import jax.numpy as jnp

    rows = 4096
    matrix = jnp.ones((rows, mib * 2**20 // 4 // rows), jnp.float32)
    vector = jnp.ones((matrix.shape[1],), jnp.float32)
    compiled = jax.jit(jnp.matmul).lower(matrix, vector).compile()
    timing = time_calls(functools.partial(compiled, matrix, vector), repeats)
    return {"bytes": matrix.nbytes, **timing.to_json(), "gb_per_s": matrix.nbytes / timing.min / 1e9}


def ceilings(args, dtypes: list[str]) -> dict:
    rows = [r for d in dtypes for r in matmul_ceiling(args.matmul_sizes, d, args.ceiling_repeats)]
    return {"matmul": rows, "matvec": bandwidth_ceiling(args.matvec_mib, args.ceiling_repeats)}


# --- (b) the model's phases ---------------------------------------------------------------------

def build(args) -> tuple[object, str, Optional[object]]:
    """The model, where its weights came from, and the checkpoint's tokenizer (None for random weights)."""
    import jax.numpy as jnp

    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.checkpoints.hub import resolve_model
    from whisper_nnx.engine.checkpoints.tensor_files import CheckpointError
    from whisper_nnx.engine.checkpoints.weights import load_model
    from whisper_nnx.engine.decode.tokenizer import Tokenizer
    from whisper_nnx.engine.model.config import DIMS
    from whisper_nnx.engine.model.whisper import build_model

    dtype = jnp.dtype(args.model_dtype)
    if args.weights != "random":
        try:
            checkpoint = read_checkpoint(resolve_model(args.model))
            tokenizer = Tokenizer.from_dir(checkpoint.directory)
            model = load_model(checkpoint, dtype=dtype, param_dtype=dtype, encoder_rows=args.encoder_rows)
            return model, "checkpoint", tokenizer
        except CheckpointError as err:
            if args.weights == "real" or args.model not in DIMS:
                raise
            print(f"no checkpoint for {args.model} ({err}); random weights", flush=True)
    if args.model not in DIMS:
        raise SystemExit(f"--weights random needs a preset name, one of {', '.join(sorted(DIMS))}")
    return build_model(DIMS[args.model], dtype=dtype, param_dtype=dtype, encoder_rows=args.encoder_rows), "random", None


def decode_config(generator, tokenizer, prompt: int, steps: int):
    """The engine's decoding settings for a P-token prompt (timestamp rules on, as in
    transcription), except that no token counts as end-of-text: every row runs `steps` steps.
    Random weights have no tokenizer file: their rules take the timestamp tokens that end every
    Whisper vocabulary (`tokenizer.N_TIMESTAMPS`) and no suppressed tokens."""
    import dataclasses

    from whisper_nnx.engine.decode.logit_rules import LogitRules
    from whisper_nnx.engine.decode.options import DecodeOptions
    from whisper_nnx.engine.decode.programs import DecodeConfig
    from whisper_nnx.engine.decode.tokenizer import N_TIMESTAMPS
    from whisper_nnx.engine.decode.window_decoder import WindowDecoder

    if tokenizer is not None:
        options = DecodeOptions.from_kwargs(sample_len=steps)
        config = WindowDecoder(generator, generator.dims).config(tokenizer, prompt, options)
        return dataclasses.replace(config, rules=dataclasses.replace(config.rules, eot=-1))
    timestamp_begin = generator.dims.n_vocab - N_TIMESTAMPS
    return DecodeConfig(rules=LogitRules(sample_begin=prompt, eot=-1, no_timestamps=timestamp_begin - 1,
                                         timestamp_begin=timestamp_begin), sample_len=steps)


def _phase(name: str, batch: int, flops: int, timing: Timing, compile_s: Optional[float], xla: dict,
           **extra) -> dict:
    return {"phase": name, "batch": batch, "flops": flops, "compile_s": compile_s, "xla_flops": xla["flops"],
            "xla_bytes": xla["bytes accessed"], **timing.to_json(), **extra}


def bench_batch(generator, config, batch: int, prompt: int, steps: int, repeats: int) -> list[dict]:
    """Encoder, prefill, steps and decoder window at `batch` rows, through the engine's own
    compiled programs (`Generator.programs`, greedy)."""
    import jax
    import jax.numpy as jnp

    from whisper_nnx.engine.decode.programs import RowSpec
    from whisper_nnx.engine.decode.strategies import Greedy
    from whisper_nnx.engine.model import flops

    dims, programs, state = generator.dims, generator.programs, generator.state
    static = dict(config=config, strategy=Greedy())
    mel = jax.random.normal(jax.random.key(0), (batch, dims.n_mels, 2 * dims.n_audio_ctx), jnp.float32)
    tokens = jnp.zeros((batch, prompt), jnp.int32)
    rows = RowSpec(jnp.zeros((batch,), jnp.int32), jnp.full((batch,), steps, jnp.int32),
                   jnp.zeros((batch,), jnp.int32), jnp.arange(batch, dtype=jnp.int32))
    rng, temperature, stop = jax.random.PRNGKey(0), jnp.float32(1.0), jnp.int32(prompt + steps)

    encode_c = aot_compile(programs.encode, state, mel)
    features = jax.block_until_ready(encode_c.call(state, mel))
    prefill_args = (state, features, tokens, rows, rng, temperature)
    prefill_c = aot_compile(programs.prefill, *prefill_args, **static)
    decode, cross, _ = prefill_c.call(*prefill_args)
    steps_c = aot_compile(programs.steps, state, decode, cross, rows, temperature, stop, **static)
    del decode

    def window():
        """The decoder window: the prefill, then the engine's loop (logit rules, argmax, decoder
        step; cross K/V as loop constants) for exactly `steps` steps."""
        decode, cross, _ = prefill_c.call(*prefill_args)
        return steps_c.call(state, decode, cross, rows, temperature, stop).tokens

    enc = time_calls(lambda: encode_c.call(state, mel), repeats)
    pre = time_calls(lambda: prefill_c.call(*prefill_args), repeats)
    dec = time_calls(window, repeats)
    steps_timing = Timing([max(d - p, 1e-9) for d, p in zip(sorted(dec.times), sorted(pre.times))])
    steps_x = {k: steps * v for k, v in steps_c.xla.items()}  # XLA counts the loop body once
    window_x = {k: prefill_c.xla[k] + steps_x[k] for k in steps_x}
    cross_flops = flops.cross_kv_flops(dims)
    pre_flops = cross_flops + flops.prefill_flops(dims, prompt)
    dec_flops = cross_flops + flops.decoder_flops(dims, steps, prompt)
    executed = cross_flops + flops.decoder_flops(dims, steps, prompt, cache_length=prompt + steps)
    return [_phase("encoder", batch, batch * flops.encoder_flops(dims), enc, encode_c.seconds, encode_c.xla),
            _phase("prefill", batch, batch * pre_flops, pre, prefill_c.seconds, prefill_c.xla),
            _phase(f"{steps} steps", batch, batch * (dec_flops - pre_flops), steps_timing, steps_c.seconds, steps_x,
                   derived="decoder window - prefill, sorted repeats paired"),
            _phase("decoder", batch, batch * dec_flops, dec, None, window_x, flops_executed=batch * executed)]


# --- (c) report ---------------------------------------------------------------------------------

def add_fractions(phases: list[dict], ceiling_gflops: float, matvec_gb_per_s: float) -> None:
    for p in phases:
        p["gflops"] = p["flops"] / p["min_s"] / 1e9
        p["fraction"] = p["gflops"] / ceiling_gflops
        p["fraction_median"] = p["flops"] / p["median_s"] / 1e9 / ceiling_gflops
        loop_free = p["xla_flops"] >= 0.98 * p["flops"]  # see the module docstring
        p["gb_per_s"] = p["xla_bytes"] / p["min_s"] / 1e9 if loop_free else None
        p["bandwidth_fraction"] = p["gb_per_s"] / matvec_gb_per_s if loop_free else None


ENCODER_TARGET, STEP_TARGET, STEP_TARGET_BATCH = 0.70, 1.5, 16  # the throughput issue's roofline rows


def target_rows(phases: list[dict], dims, prompt: int, steps: int, value_bytes: int, matvec_gb_per_s: float
                ) -> list[dict]:
    """Per batch: the encoder's fraction of the matmul ceiling, and a decode step's best time over
    its memory floor (`flops.step_bytes` over the matvec ceiling), each against its target."""
    from whisper_nnx.engine.model import flops

    rows = []
    for p in phases:
        if p["phase"] == "encoder":
            rows.append({"batch": p["batch"], "what": "encoder, of matmul ceiling", "value": p["fraction"],
                         "goal": ENCODER_TARGET, "met": p["fraction"] >= ENCODER_TARGET})
        elif p["phase"] == f"{steps} steps":
            step_s = p["min_s"] / steps
            floor_s = flops.step_bytes(dims, p["batch"], prompt + steps // 2, value_bytes) / (matvec_gb_per_s * 1e9)
            ratio = step_s / floor_s
            rows.append({"batch": p["batch"], "what": "decode step, over its memory floor", "value": ratio,
                         "goal": STEP_TARGET, "step_ms": step_s * 1e3, "floor_ms": floor_s * 1e3,
                         "met": ratio <= STEP_TARGET if p["batch"] == STEP_TARGET_BATCH else None})
    return rows


def target_table(rows: list[dict]) -> str:
    lines = ["| batch | measure | value | target | verdict |", "|---:|---|---:|---:|---|"]
    for r in rows:
        if "floor_ms" in r:
            value, goal = f"{r['value']:.2f}x ({r['step_ms']:.1f} ms / {r['floor_ms']:.1f} ms)", f"≤ {r['goal']}x"
        else:
            value, goal = f"{r['value']:.1%}", f"≥ {r['goal']:.0%}"
        lines.append(f"| {r['batch']} | {r['what']} | {value} | {goal} | {VERDICT[r['met']]} |")
    return "\n".join(lines)


def dtype_bytes(dtype_name: str) -> int:
    """Bytes per value of a dtype named as on the command line (bfloat16 included)."""
    import ml_dtypes
    import numpy as np

    return np.dtype(getattr(ml_dtypes, dtype_name, dtype_name)).itemsize


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}" if s < 0.01 else f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def ceiling_table(found: dict) -> str:
    lines = ["| ceiling | size | best ms | median ms | rate |", "|---|---:|---:|---:|---:|"]
    lines += [f"| matmul {r['dtype']} | n = {r['n']} | {_ms(r['min_s'])} | {_ms(r['median_s'])} | "
              f"{r['gflops']:.1f} GFLOP/s |" for r in found["matmul"]]
    s = found["matvec"]
    lines.append(f"| matvec float32 | {s['bytes'] / 2**20:.0f} MiB | {_ms(s['min_s'])} | {_ms(s['median_s'])} | "
                 f"{s['gb_per_s']:.1f} GB/s |")
    return "\n".join(lines)


def phase_table(phases: list[dict]) -> str:
    lines = ["| batch | phase | GFLOP | best ms | median ms | GFLOP/s | of matmul ceiling | GB/s (XLA bytes) | "
             "of matvec | compile s |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in phases:
        compile_s = "-" if p["compile_s"] is None else f"{p['compile_s']:.1f}"
        bw = "- | -" if p["gb_per_s"] is None else f"{p['gb_per_s']:.1f} | {p['bandwidth_fraction']:.0%}"
        lines.append(f"| {p['batch']} | {p['phase']} | {p['flops'] / 1e9:.2f} | {_ms(p['min_s'])} | "
                     f"{_ms(p['median_s'])} | {p['gflops']:.1f} | {p['fraction']:.1%} | {bw} | {compile_s} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    select_device(args.device)
    dtypes = list(dict.fromkeys([*args.dtypes, args.model_dtype]))
    t0, git, machine = time.perf_counter(), git_info(), machine_info()

    import jax

    print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()[0].device_kind}", flush=True)
    before = ceilings(args, dtypes)
    print(ceiling_table(before), flush=True)
    from whisper_nnx.engine.decode.generate import Generator

    model, weights, tokenizer = build(args)
    generator = Generator(model)
    config = decode_config(generator, tokenizer, args.prompt, args.steps)
    phases = []
    for batch in args.batch_sizes:
        print(f"[{time.perf_counter() - t0:.0f} s] batch {batch}", flush=True)
        phases += bench_batch(generator, config, batch, args.prompt, args.steps, args.repeats)
    after = ceilings(args, dtypes)
    rows = before["matmul"] + after["matmul"]
    best = {d: max(r["gflops"] for r in rows if r["dtype"] == d) for d in dtypes}
    matvec = max(before["matvec"]["gb_per_s"], after["matvec"]["gb_per_s"])
    add_fractions(phases, best[args.model_dtype], matvec)
    targets = target_rows(phases, model.dims, args.prompt, args.steps, dtype_bytes(args.model_dtype), matvec)

    settings = {"model": args.model, "weights": weights, "model_dtype": args.model_dtype,
                "encoder_rows": args.encoder_rows,
                "batch_sizes": args.batch_sizes, "prompt": args.prompt, "steps": args.steps,
                "repeats": args.repeats, "matmul_sizes": args.matmul_sizes, "dtypes": dtypes,
                "ceiling_repeats": args.ceiling_repeats, "matvec_mib": args.matvec_mib, "device": args.device,
                "dims": model.dims.to_dict(),
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}
    results = {"ceilings_before": before, "ceilings_after": after, "matmul_gflops": best, "matvec_gb_per_s": matvec,
               "phases": phases, "targets": targets, "notes": list(args.note), "total_s": time.perf_counter() - t0,
               "peak_rss_bytes": peak_rss_bytes()}
    rec = record("roofline", settings, results, git=git, machine=machine)
    path = write_record(rec)
    print("\nafter the model:\n" + ceiling_table(after) + "\n\n" + _ceiling_line(results) + "\n\n"
          + phase_table(phases) + "\n\n" + target_table(targets))
    print(f"record: {path.relative_to(REPO)}  ({results['total_s']:.0f} s)")
    if args.results_md:
        update_results_md(*_section(rec, path))


def _ceiling_line(res: dict) -> str:
    matmul = ", ".join(MATMUL.format(dtype=d, gflops=x) for d, x in res["matmul_gflops"].items())
    return CEILINGS.format(matmul=matmul, matvec=res["matvec_gb_per_s"])


def _section(rec: dict, path: Path) -> tuple[str, str, str]:
    """(title, subsection, body) for RESULTS.md."""
    res = rec["results"]
    fields = {**report_fields(rec, path), "backend": rec["jax"]["backend"]}
    body = [REPORT.format(**fields), _ceiling_line(res), BEFORE, ceiling_table(res["ceilings_before"]),
            AFTER, ceiling_table(res["ceilings_after"]), PHASES, phase_table(res["phases"]),
            *([TARGETS, target_table(res["targets"])] if "targets" in res else []), *notes(res["notes"])]
    return machine_title(rec), SUBSECTION.format(**fields), "\n\n".join(body)


if __name__ == "__main__":
    main()
