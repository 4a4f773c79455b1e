"""Throughput against mesh shape on simulated CPU devices (sharding overhead, not speed-up).

    .venv/bin/python benchmarks/bench_mesh.py [--model tiny.en] [--batch 16] [--meshes 8x1,4x2,2x4,1x8]

Sets XLA_FLAGS to 8 host devices when unset (before JAX starts). Simulated devices share this
machine's cores, so a bigger mesh cannot be faster here: the ratios against the single-device
run of the same script measure what sharding costs (collectives, layout changes, per-device
dispatch). Greedy, temperature 0, the same clips tiled into one batch for every shape; each
shape also checks that its transcripts equal the single-device ones.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
from common import (  # the script's own folder is on sys.path
    git_info,
    machine_info,
    machine_title,
    peak_rss_bytes,
    record,
    report_fields,
    time_calls,
    update_results_md,
    write_record,
)

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"

# RESULTS.md: the subsection title and the paragraph above the table (fields: `_section`).
SUBSECTION = "mesh"
COMMAND = "benchmarks/bench_mesh.py --batch {batch} --meshes {meshes}"
REPORT = (
    "{head}; {model}, {batch} clips ({audio_s:.0f} s of audio) in one batch, greedy. 8 simulated CPU devices "
    "share {cores} cores, so this measures sharding overhead, not speed-up. Record: `{record}`.")


def _clips(batch: int) -> tuple[list[np.ndarray], float]:
    from whisper_nnx.engine.audio import load_audio

    paths = sorted(DATA.glob("sample_*.flac")) + sorted((DATA / "corpus").glob("*.flac"))
    clips = [load_audio(p) for p in paths]
    tiled = [clips[i % len(clips)] for i in range(batch)]
    return tiled, sum(c.size for c in tiled) / 16000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--meshes", default="8x1,4x2,2x4,1x8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args(argv)
    git, machine = git_info(), machine_info()

    import jax

    from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber
    from whisper_nnx.sharding.mesh import make_mesh

    clips, audio_s = _clips(args.batch)
    options = TranscribeOptions.from_kwargs(language="en", temperature=0.0, batch_size=args.batch)
    rows, baseline, expected = [], None, None
    for spec in ["none"] + args.meshes.split(","):
        mesh = None if spec == "none" else make_mesh(spec)
        transcriber = Transcriber(args.model, mesh=mesh)
        outputs = {}

        def run(transcriber=transcriber, outputs=outputs):
            outputs["records"] = transcriber.decode_clips(clips, options)

        timing = time_calls(run, repeats=args.repeats, warmup=1)
        tokens = [r["tokens"] for r in outputs["records"]]
        expected = expected or tokens
        baseline = baseline or timing.median
        rows.append({"mesh": spec, "devices": 1 if mesh is None else mesh.devices.size,
                     "timing": timing.to_json(), "audio_s_per_s": audio_s / timing.median,
                     "vs_single_device": timing.median / baseline, "same_tokens": tokens == expected})
        print(f"{spec:>5}: {timing.median:7.2f} s  {audio_s / timing.median:6.2f} audio s/s  "
              f"x{timing.median / baseline:.2f} of one device  same tokens: {tokens == expected}", flush=True)
    settings = {"model": args.model, "batch": args.batch, "repeats": args.repeats, "audio_s": audio_s,
                "decoding": "greedy, temperature 0", "xla_flags": os.environ.get("XLA_FLAGS"),
                "jax_devices": len(jax.devices()), "peak_rss_bytes": peak_rss_bytes()}
    rec = record("mesh", settings, rows, git=git, machine=machine)
    path = write_record(rec)
    print(table(rows))
    if not args.no_results_md:
        update_results_md(*_section(rec, path))


def table(rows: list[dict]) -> str:
    lines = ["| mesh (data x model) | devices | median s | audio s / s | time vs one device | same tokens |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['mesh']} | {r['devices']} | {r['timing']['median_s']:.2f} | {r['audio_s_per_s']:.2f} | "
              f"{r['vs_single_device']:.2f} | {'yes' if r['same_tokens'] else 'NO'} |" for r in rows]
    return "\n".join(lines)


def _section(rec: dict, path: Path) -> tuple[str, str, str]:
    """RESULTS.md's (date and machine, `mesh`, body); the meshes are the record's rows after the
    single-device one."""
    s, rows = rec["settings"], rec["results"]
    command = COMMAND.format(batch=s["batch"], meshes=",".join(r["mesh"] for r in rows[1:]))
    fields = report_fields(rec, path, command=command, unknown="unknown")
    fields["cores"] = rec["machine"]["cores"]
    return machine_title(rec, device=False), SUBSECTION, REPORT.format(**fields) + "\n\n" + table(rows)


if __name__ == "__main__":
    main()
