"""Decode benchmark: per-phase times of the jitted pieces, then end-to-end transcription against
openai-whisper (CPU PyTorch, float32, the same weights) measured in the same run.

    .venv/bin/python benchmarks/bench_decode.py --model tiny.en --batch-sizes 1,8,32 --beam-sizes 1,5

Phases: the engine's own compiled programs (`features.log_mel_spectrogram_jit` and the
Transcriber's `Generator.programs`, greedy), compiled ahead of time so compile and run times are
separate, timed after warm-up with `block_until_ready`:
  log-mel [B, 480000] -> [B, M, 3000]; encode -> [B, 1500, D]; prefill (cross K/V and the prompt,
  the cache sized for the prompt + sample_len); one step of the decode loop (logit rules, token
  choice, decoder step; the loop state donated) at B rows, and at B x beam rows for each beam size.
End to end: `Transcriber.decode_clips(arrays, TranscribeOptions(language="en", batch_size=B))`
(host padding, log-mel, the jitted generate loop, token -> text) against the peer's per-clip
log-mel plus `whisper.decode(model, mel_batch, DecodingOptions(...))`, alternating ours and
theirs on each repeat so that load from other jobs hits both alike.

Tokens/s counts the tokens each row sampled (text and timestamp tokens up to and including the
EOT) summed over the batch, over the end-to-end wall time. Speed is audio seconds (the clips'
real durations, not the 30 s padding) over wall seconds: 10 means ten times faster than real
time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
from common import (  # the script's own folder is on sys.path
    REPO,
    Compiled,
    Timing,
    aot_compile,
    commit_label,
    git_info,
    machine_info,
    machine_title,
    notes,
    peak_rss_bytes,
    record,
    report_fields,
    time_calls,
    update_results_md,
    write_record,
)

DATA = REPO / "tests" / "data"

# RESULTS.md: the subsection title and the paragraphs around the tables (fields: `_section_body`).
SUBSECTION = "decode, {commit_label}"
REPORT = (
    "{head}; {versions}, torch {torch} ({torch_threads} threads), openai-whisper {openai_whisper}; "
    "{ram_gib:.0f} GiB RAM; {model} float32. Audio: {clips} synthesized clips ({shortest:.1f}–{longest:.1f} s, "
    "tests/data and tests/data/corpus) tiled into each batch. Repeats: {repeats} below batch {large_batch}, "
    "{large_repeats} from it on (after warm-up). Run took {minutes:.0f} min, peak RSS {peak_gib:.1f} GiB (both "
    "models in one process). Record: `{record}`.")
PHASES = ("Per phase (the engine's own compiled programs, compiled ahead of time, medians after warm-up; "
          "`encode (peer)` is openai-whisper's encoder on the same shape):")
OURS_MODE = {True: "with the default temperature fallback",
             False: "one pass at temperature 0, no fallback, as the peer"}  # by settings["fallback"]
E2E = (
    "End to end (ours: `Transcriber.transcribe` on arrays, {ours_mode}; peer: per-clip log-mel + openai-whisper "
    "`decode` on CPU PyTorch, same weights; ×RT = audio seconds / wall seconds; tok/s = sampled tokens incl. EOT "
    "summed over the batch / wall seconds; loop ms/step = (end to end − log-mel − encode − prefill) / longest row, "
    "greedy only; ours/peer < 1 means we are faster):")
NOISE = (
    "Noise: the 1-minute load average was {load_avg:.1f} on {cores} cores at the start (other jobs' tests were "
    "running), and repeats of one measurement spread by up to {max_spread:.0%} of their median; absolute times are "
    "therefore pessimistic and only good to tens of percent. The ours/peer ratios are steadier because each repeat "
    "runs ours and then the peer back to back.")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--beam-sizes", default="1,5", help="1 = greedy; others: beam search")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    p.add_argument("--large-batch", type=int, default=32,
                   help="from this batch size on, use --large-repeats (keeps the run short)")
    p.add_argument("--large-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores available)")
    p.add_argument("--audio", nargs="*", default=None,
                   help="clips to tile into each batch (default: tests/data/*.flac and tests/data/corpus/*.flac)")
    p.add_argument("--fallback", action="store_true",
                   help="ours with the engine's default temperature fallback (the peer's decode never falls back)")
    p.add_argument("--no-peer", action="store_true", help="skip openai-whisper")
    p.add_argument("--no-phases", action="store_true", help="skip the per-phase timings")
    p.add_argument("--no-results-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    p.add_argument("--note", action="append", default=[], help="a sentence for RESULTS.md (repeatable)")
    p.add_argument("--from-record", default=None,
                   help="measure nothing: rewrite RESULTS.md's section from this JSON record")
    return p.parse_args(argv)


def _ints(spec: str) -> list[int]:
    return [int(x) for x in spec.split(",") if x.strip()]


# --- audio --------------------------------------------------------------------------------------

def load_clips(paths: Optional[list[str]]) -> list[tuple[str, np.ndarray]]:
    from whisper_nnx.engine.audio import load_audio

    if not paths:
        paths = sorted(DATA.glob("*.flac")) + sorted((DATA / "corpus").glob("*.flac"))
    return [(Path(p).name, load_audio(p)) for p in paths]


def tile(clips: list[tuple[str, np.ndarray]], n: int) -> list[np.ndarray]:
    return [clips[i % len(clips)][1] for i in range(n)]


# --- per-phase timings --------------------------------------------------------------------------

def _phase(name: str, rows: int, compiled: Optional[Compiled], timing: Timing) -> dict:
    compile_s, temp = (None, None) if compiled is None else (compiled.seconds, compiled.temp_bytes)
    return {"phase": name, "rows": rows, "compile_s": compile_s, "temp_bytes": temp, **timing.to_json()}


def bench_phases(transcriber, prompt: list[int], sample_len: int, batch: int, beam_sizes: list[int],
                 repeats: int) -> list[dict]:
    """mel, encode, prefill at `batch` rows; one decode step per beam size: greedy's at `batch`
    rows (beam 1), beam search's at `batch` examples x beam beams: the engine's own programs
    (`Generator.programs`), compiled ahead of time."""
    import jax
    import jax.numpy as jnp

    from whisper_nnx.engine.decode.options import DecodeOptions
    from whisper_nnx.engine.decode.programs import default_rows
    from whisper_nnx.engine.decode.strategies import BeamSearch, Greedy
    from whisper_nnx.engine.features import log_mel_spectrogram_jit

    generator = transcriber.generator
    programs, state = generator.programs, generator.state
    config = transcriber.decoder.config(transcriber.tokenizer, len(prompt),
                                        DecodeOptions.from_kwargs(sample_len=sample_len))
    # EOT suppressed as well: on random audio every row could finish, and the loop stop early.
    rules = dataclasses.replace(config.rules, suppress_ids=config.rules.suppress_ids + (config.rules.eot,))
    config = dataclasses.replace(config, rules=rules)
    rng, temperature = jax.random.PRNGKey(0), jnp.float32(0.0)
    audio = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 480_000), np.float32) * 0.1)

    out = []
    mel_c = aot_compile(log_mel_spectrogram_jit, audio, n_mels=transcriber.dims.n_mels)
    out.append(_phase("log-mel", batch, mel_c, time_calls(lambda: mel_c.call(audio), repeats)))
    mel = mel_c.call(audio)
    encode_c = aot_compile(programs.encode, state, mel)
    out.append(_phase("encode", batch, encode_c, time_calls(lambda: encode_c.call(state, mel), repeats)))
    features = jax.block_until_ready(encode_c.call(state, mel))
    toks = jnp.asarray(np.tile(np.asarray(prompt, np.int32), (batch, 1)))
    layout = default_rows(None, batch, config)
    for beam in beam_sizes:
        if beam == 1:
            static = dict(config=config, strategy=Greedy())
            args = (state, features, toks, layout, rng, temperature)
            prefill_c = aot_compile(programs.prefill, *args, **static)
            out.append(_phase("prefill", batch, prefill_c, time_calls(lambda c=prefill_c, a=args: c.call(*a), repeats)))
            decode, cross, _ = jax.block_until_ready(prefill_c.call(*args))
            decode = decode._replace(finished=jnp.zeros_like(decode.finished))
            program, after = programs.steps, lambda s, c=cross: (c, layout, temperature, s.length + 1)
        else:
            static = dict(config=config, strategy=BeamSearch(beam_size=beam))
            args = (state, features, toks, layout)
            prefill_c = aot_compile(programs.beam_prefill, *args, **static)
            out.append(_phase(f"prefill (beam {beam})", batch * beam, prefill_c,
                              time_calls(lambda c=prefill_c, a=args: c.call(*a), repeats)))
            decode, cross, _, _ = jax.block_until_ready(prefill_c.call(*args))
            program, after = programs.beam_steps, lambda s, c=cross: (c, layout, s.length + 1)
        name = "decode step" if beam == 1 else f"beam step (beam {beam})"
        out.append(_time_step(program, state, decode, after, static, batch * beam, repeats, name))
    return out


def _time_step(program, state, decode, after, static: dict, rows: int, repeats: int, name: str) -> dict:
    """One step of the engine's decode loop (greedy: logit rules, token choice, decoder step;
    beam: the same over every beam plus the beams' bookkeeping) at `rows` rows, the loop state
    donated and fed back in on every call. Rows never finish meanwhile (EOT is suppressed), and
    a finished row would still cost its step. `program(state, decode, *after(decode), **static)`
    runs up to buffer length decode.length + 1."""
    compiled = aot_compile(program, state, decode, *after(decode), **static)
    holder = [decode]

    def one_step():
        holder[0] = compiled.call(state, holder[0], *after(holder[0]))
        return holder[0].logits

    steps = 3 * repeats  # a step is short: more repeats for the same noise
    return _phase(name, rows, compiled, time_calls(one_step, steps, warmup=min(3, repeats)))


# --- end to end ---------------------------------------------------------------------------------

def _sampled_tokens(token_lists: list[list[int]], sample_len: int) -> int:
    """Tokens sampled per row including the EOT (absent only when a row hit the length limit)."""
    return sum(len(t) + (1 if len(t) < sample_len else 0) for t in token_lists)


class Ours:
    def __init__(self, model_name: str, fallback: bool = False):
        from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber

        self.transcriber = Transcriber(model_name)
        self.options_cls = TranscribeOptions
        self.fallback = fallback

    def run(self, clips: list[np.ndarray], beam: int) -> list[dict]:
        # One pass at temperature 0, like the peer's `decode`; the engine's default retries
        # failing windows at higher temperatures (a different, larger workload).
        kw = {} if self.fallback else {"temperature": 0.0}
        options = self.options_cls.from_kwargs(language="en", batch_size=len(clips),
                                               beam_size=beam if beam > 1 else None, **kw)
        records = self.transcriber.decode_clips(clips, options)
        bad = [r["error"] for r in records if r.get("error")]
        if bad:
            raise RuntimeError(f"our transcription failed: {bad[0]}")
        return records


class Peer:
    """openai-whisper on CPU PyTorch in float32 with exactly our weights (checkpoints.reference)."""

    def __init__(self, checkpoint, threads: int):
        import torch

        from whisper_nnx.engine.checkpoints.reference import reference_model

        torch.set_num_threads(threads)
        _patch_beam_batch()
        self.torch = torch
        self.model = reference_model(checkpoint.dims, checkpoint.params)
        self.n_mels = checkpoint.dims.n_mels

    def encode_phase(self, batch: int, repeats: int) -> dict:
        """The reference encoder on [B, M, 3000] (the phase that dominates both sides)."""
        mel = self.torch.randn(batch, self.n_mels, 3000)
        with self.torch.inference_mode():
            timing = time_calls(lambda: self.model.encoder(mel), repeats)
        return _phase("encode (peer)", batch, None, timing)

    def run(self, clips: list[np.ndarray], beam: int) -> list:
        import whisper

        # Per clip, as whisper.transcribe does: a batched call would share one -8 floor.
        mel = self.torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(self.torch.from_numpy(c)),
                                                            n_mels=self.n_mels) for c in clips])
        options = whisper.DecodingOptions(language="en", fp16=False, beam_size=beam if beam > 1 else None)
        return whisper.decode(self.model, mel, options)


def _patch_beam_batch() -> None:
    """openai-whisper 20250625 repeats the prompt tokens n_group times for beam search but not the
    audio features (a regression from openai/whisper#1483, fixes pending in #2197, #2389, #2843):
    one clip works by broadcasting, more fail in cross-attention (B x beams rows against B).
    Repeat the features after the encoder when there is more than one clip, as releases before
    #1483 did; language detection still sees one row per clip, and `run` takes every
    n_group-th feature row back as it always has."""
    from whisper.decoding import DecodingTask

    if getattr(DecodingTask, "_bench_patched", False):
        return
    encode, detect = DecodingTask._get_audio_features, DecodingTask._detect_language

    def _get_audio_features(self, mel):
        features = encode(self, mel)
        return features.repeat_interleave(self.n_group, dim=0) if mel.shape[0] > 1 else features

    def _detect_language(self, audio_features, tokens):
        if audio_features.shape[0] != tokens.shape[0]:
            audio_features = audio_features[:: self.n_group]
        return detect(self, audio_features, tokens)

    DecodingTask._get_audio_features = _get_audio_features
    DecodingTask._detect_language = _detect_language
    DecodingTask._bench_patched = True


def bench_e2e(ours: Ours, peer: Optional[Peer], clips: list[np.ndarray], beam: int, repeats: int,
              sample_len: int, peer_warmup: bool = True) -> dict:
    """Warm up both (ours compiles on its first call), then alternate ours/theirs `repeats` times."""
    start = time.perf_counter()
    records = ours.run(clips, beam)
    first_call = time.perf_counter() - start
    theirs = peer.run(clips, beam) if peer and peer_warmup else None
    times_ours, times_theirs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        records = ours.run(clips, beam)
        times_ours.append(time.perf_counter() - start)
        if peer:
            start = time.perf_counter()
            theirs = peer.run(clips, beam)
            times_theirs.append(time.perf_counter() - start)
    audio_s = sum(c.shape[0] for c in clips) / 16_000
    t_ours = Timing(times_ours)
    tok_ours = _sampled_tokens([r["tokens"] for r in records], sample_len)
    result = {"batch": len(clips), "beam": beam, "audio_s": audio_s,
              "ours": {**t_ours.to_json(), "first_call_s": first_call, "tokens": tok_ours,
                       "max_row_tokens": max(len(r["tokens"]) + 1 for r in records),
                       "tokens_per_s": tok_ours / t_ours.median, "speed_x_realtime": audio_s / t_ours.median,
                       "texts": sorted({r["text"] for r in records})},
              "peak_rss_bytes": peak_rss_bytes()}
    if peer:
        t_theirs = Timing(times_theirs)
        tok_theirs = _sampled_tokens([list(r.tokens) for r in theirs], sample_len)
        same = sum(a["text"] == b.text.strip() for a, b in zip(records, theirs))
        result["theirs"] = {**t_theirs.to_json(), "tokens": tok_theirs,
                            "tokens_per_s": tok_theirs / t_theirs.median,
                            "speed_x_realtime": audio_s / t_theirs.median}
        result["ratio_ours_over_theirs"] = t_ours.median / t_theirs.median
        result["same_text_rows"] = same
    return result


def _implied_step(phases: Optional[list[dict]], result: dict) -> Optional[float]:
    """(end-to-end - log-mel - encode - prefill) / steps: the per-step cost inside the jitted loop
    (plus host work), to compare with the standalone decode step."""
    if not phases or result["beam"] > 1:  # a beam's loop runs past the winner's length
        return None
    by = {(p["phase"], p["rows"]): p["median_s"] for p in phases}
    batch = result["batch"]
    fixed = [by.get(("log-mel", batch)), by.get(("encode", batch)), by.get(("prefill", batch))]
    if None in fixed:
        return None
    return (result["ours"]["median_s"] - sum(fixed)) / result["ours"]["max_row_tokens"]


# --- report -------------------------------------------------------------------------------------

def _ms(s: float) -> str:
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def phase_table(phases: dict[int, list[dict]]) -> str:
    lines = ["| batch | phase | rows | median ms | min ms | spread | compile s |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for batch, rows in phases.items():
        for r in rows:
            compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
            lines.append(f"| {batch} | {r['phase']} | {r['rows']} | {_ms(r['median_s'])} | {_ms(r['min_s'])} "
                         f"| {r['spread']:.0%} | {compile_s} |")
    return "\n".join(lines)


def e2e_table(e2e: list[dict]) -> str:
    lines = ["| batch | beam | audio s | ours s | ours tok/s | ours ×RT | first call s | loop ms/step | "
             "peer s | peer tok/s | peer ×RT | ours/peer time | same text |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in e2e:
        o, t = r["ours"], r.get("theirs")
        implied = o.get("implied_loop_step_s")
        step = "-" if implied is None else f"{implied * 1e3:.0f}" if implied > 0 else "<0 (noise)"
        peer = "- | - | - | - | -"
        if t:
            peer = (f"{t['median_s']:.3f} | {t['tokens_per_s']:.0f} | {t['speed_x_realtime']:.1f} | "
                    f"**{r['ratio_ours_over_theirs']:.2f}** | {r['same_text_rows']}/{r['batch']}")
        lines.append(f"| {r['batch']} | {r['beam']} | {r['audio_s']:.1f} | {o['median_s']:.3f} | "
                     f"{o['tokens_per_s']:.0f} | {o['speed_x_realtime']:.1f} | {o['first_call_s']:.1f} | "
                     f"{step} | {peer} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_record:
        path = Path(args.from_record).resolve()
        rec = json.loads(path.read_text())
        rec["results"]["notes"] += args.note
        update_results_md(_section_title(rec), _subsection(rec), _section_body(rec, path))
        return
    threads = args.threads or len(os.sched_getaffinity(0))
    batch_sizes, beam_sizes = _ints(args.batch_sizes), _ints(args.beam_sizes)

    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.checkpoints.hub import resolve_model

    t0 = time.perf_counter()
    git = git_info()  # the code this process runs: others may commit while it measures
    machine = machine_info()  # with the load average when measuring starts
    checkpoint = read_checkpoint(resolve_model(args.model))
    ours = Ours(args.model, fallback=args.fallback)
    notes = list(args.note)
    tok = ours.transcriber.tokenizer
    prompt = list(tok.sot_sequence)
    sample_len = min(224, checkpoint.dims.n_text_ctx - len(prompt))
    clips = load_clips(args.audio)
    print(f"clips: {', '.join(f'{n} ({a.shape[0] / 16000:.1f} s)' for n, a in clips)}", flush=True)
    peer = None if args.no_peer else Peer(checkpoint, threads)

    phases: dict[int, list[dict]] = {}
    e2e: list[dict] = []
    for batch in batch_sizes:
        repeats = args.large_repeats if batch >= args.large_batch else args.repeats
        if not args.no_phases:
            print(f"[{time.perf_counter() - t0:.0f} s] phases, batch {batch}", flush=True)
            phases[batch] = bench_phases(ours.transcriber, prompt, sample_len, batch, beam_sizes, repeats)
            if peer and batch < args.large_batch:
                phases[batch].insert(2, peer.encode_phase(batch, repeats))
            print(phase_table({batch: phases[batch]}), flush=True)
        for beam in beam_sizes:
            print(f"[{time.perf_counter() - t0:.0f} s] end to end, batch {batch}, beam {beam}", flush=True)
            result = bench_e2e(ours, peer, tile(clips, batch), beam, repeats, sample_len,
                               peer_warmup=batch < args.large_batch)
            result["ours"]["implied_loop_step_s"] = _implied_step(phases.get(batch), result)
            e2e.append(result)
            print(e2e_table([result]), flush=True)

    settings = {"model": args.model, "batch_sizes": batch_sizes, "beam_sizes": beam_sizes,
                "repeats": args.repeats, "large_batch": args.large_batch, "large_repeats": args.large_repeats,
                "torch_threads": threads, "dtype": "float32", "fallback": args.fallback,
                "prompt": prompt, "sample_len": sample_len,
                "clips": [{"name": n, "seconds": a.shape[0] / 16000} for n, a in clips],
                "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}
    rec = record("decode", settings, {"phases": phases, "e2e": e2e, "notes": notes,
                                      "total_s": time.perf_counter() - t0, "peak_rss_bytes": peak_rss_bytes()},
                 git=git, machine=machine)
    path = write_record(rec)
    print("\n" + phase_table(phases) + "\n\n" + e2e_table(e2e))
    for note in notes:
        print("note:", note)
    print(f"record: {path.relative_to(REPO)}  ({rec['results']['total_s']:.0f} s)")
    if not args.no_results_md:
        update_results_md(_section_title(rec), _subsection(rec), _section_body(rec, path))


def _section_title(rec: dict) -> str:
    return machine_title(rec, device=False)


def _subsection(rec: dict) -> str:
    return SUBSECTION.format(commit_label=commit_label(rec["git"]))


def _section_body(rec: dict, path: Path) -> str:
    s, res = rec["settings"], rec["results"]
    phases = {int(k): rows for k, rows in res["phases"].items()}
    seconds = [c["seconds"] for c in s["clips"]]
    spreads = [p["spread"] for rows in phases.values() for p in rows]
    spreads += [r[side]["spread"] for r in res["e2e"] for side in ("ours", "theirs") if side in r]
    fields = {**report_fields(rec, path), "clips": len(seconds), "shortest": min(seconds), "longest": max(seconds),
              "minutes": res["total_s"] / 60, "peak_gib": res["peak_rss_bytes"] / 2**30,
              "max_spread": max(spreads), "ours_mode": OURS_MODE[bool(s.get("fallback"))]}
    parts = [REPORT.format(**fields), PHASES, phase_table(phases), E2E.format(**fields), e2e_table(res["e2e"]),
             NOISE.format(**fields), *notes(res["notes"])]
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
