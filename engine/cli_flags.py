"""The flags of `whisper-nnx transcribe` and `eval`, one argparse group per concern (cli.py maps
them onto the run)."""

from __future__ import annotations

import argparse
import os
from typing import Optional


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, "(default: ...)", unless its help already says it or
    there is nothing to show (None, a switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if "default" in text or not shown or not action.option_strings:
            return action.help
        return super()._get_help_string(action)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of a run (transcribe and eval take the same)."""
    _input_flags(parser)
    _decoding_flags(parser)
    _long_form_flags(parser)
    _word_flags(parser)
    _model_flags(parser)


def _input_flags(parser: argparse.ArgumentParser) -> None:
    from .writers import FORMATS

    g = parser.add_argument_group("inputs and outputs")
    g.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio/video files, folders (searched recursively), manifests or datasets")
    g.add_argument("-o", "--output-dir", "--output_dir", default="whisper-nnx-out", metavar="DIR",
                   help="where results.jsonl, summary.json and the per-format files go (a folder or a bucket URL)")
    g.add_argument("-f", "--formats", "--output-format", "--output_format", default="json,txt",
                   help=f"comma-separated from {','.join(FORMATS)},parquet, or all (every one of "
                        f"{','.join(FORMATS)}) (parquet: one results.parquet of every record, written at the "
                        "end of the run)")
    g.add_argument("--output-layout", choices=("tree", "flat"), default="tree",
                   help="where each input's files go: tree (default) keeps the input's folders under "
                        "--output-dir (corpus/a/movie.mp4 -> a/movie.srt), so that a large tree's many "
                        "equal names (every */audio.flac) stay apart and findable; flat puts every file in "
                        "--output-dir (a second equal name gets stem~2). Each record lists its files")
    g.add_argument("--staging-dir", default=None,
                   help="an --output-dir URL: the local folder the run writes before uploading "
                        "(default: ~/.cache/whisper-nnx/staging/<hash of the URL>)")
    g.add_argument("--upload-every", type=float, default=30.0, metavar="SECONDS",
                   help="an --output-dir URL: upload the records written so far this often (a kill "
                        "loses at most this much work)")
    g.add_argument("--audio-column", default=None, help="dataset inputs: the audio column (default: detected)")
    g.add_argument("--id-column", default=None,
                   help="dataset inputs: a column naming each row's record (default: FILE:ROW)")
    g.add_argument("--text-column", default="text",
                   help="reference text: the dataset column / manifest field / WebDataset member (eval)")
    g.add_argument("--follow-row-paths", action="store_true",
                   help="dataset inputs: follow a row's audio path that is absolute, climbs out with '..' or "
                        "is a URL (dataset rows are untrusted: by default such a row is an error record)")
    g.add_argument("--resume", action="store_true",
                   help="continue a run in --output-dir: skip entries with a record, redo the rest and "
                        "entries whose record is a run error (out of memory, device failure)")
    g.add_argument("--retry-errors", action="store_true",
                   help="with --resume: also redo entries whose record is an input error (bad audio)")
    g.add_argument("--dry-run", action="store_true",
                   help="list the inputs and print what the run would do (entries, unreadable entries and "
                        "missing files with the first reasons, hours of audio from file headers, what --resume "
                        "would redo), then exit 0: no model is loaded and nothing is written (the output "
                        "folder is not created; its results.jsonl is only read); decoding flags are not checked")
    g.add_argument("--dry-run-probe", type=int, default=200, metavar="N",
                   help="--dry-run: read the duration of the first N local files from their headers (the rest "
                        "is estimated from them; every local file is only checked to exist)")
    g.add_argument("--quiet", action="store_true", help="do not print each transcript")
    g.add_argument("--no-progress", action="store_true", help="no progress bar / periodic progress log lines")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="log INFO lines (JAX backends, model loading, resuming); default: warnings and errors")


def _decoding_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("decoding")
    g.add_argument("--language", default="auto", help="auto (detect) or a code such as en, de")
    g.add_argument("--language-detection-segments", type=int, default=1, metavar="N",
                   help="auto: detect on up to N 30 s windows from the start (the first above the threshold "
                        "decides, else the majority; faster-whisper's option; 1: the first window, as the reference)")
    g.add_argument("--language-per-window", action="store_true",
                   help="auto, sequential: detect the language of every window and decode it in that language "
                        "(files that switch languages); each segment records its language")
    g.add_argument("--language-detection-threshold", type=float, default=0.5, metavar="P",
                   help="auto: a window decides the language when its top probability exceeds this")
    g.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                   help="transcribe, or translate into English")
    g.add_argument("--batch-size", type=int, default=8, help="30 s windows decoded together on the device")
    g.add_argument("--beam-size", type=int, default=5, help="beams at temperature 0; 0 or 1: greedy-like")
    g.add_argument("--best-of", type=int, default=5, help="samples per window at temperature > 0")
    g.add_argument("--patience", type=float, default=None,
                   help="beam search: collect round(beam size x this) finished candidates (default 1)")
    g.add_argument("--length-penalty", type=float, default=None,
                   help="alpha of ((5 + len) / 6) ** alpha; default: divide by length")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature of the first try (0: beam search or greedy)")
    g.add_argument("--temperature-increment-on-fallback", type=float, default=0.2,
                   help="retry failing windows at temperature + k * this, up to 1.0; 0 disables")
    g.add_argument("--compression-ratio-threshold", type=float, default=2.4,
                   help="retry a window at the next temperature when its text's zlib compression ratio is above this")
    g.add_argument("--logprob-threshold", type=float, default=-1.0,
                   help="retry a window at the next temperature when its mean token log probability is below this")
    g.add_argument("--no-speech-threshold", type=float, default=0.6,
                   help="a window whose no-speech probability is above this and whose log probability is below "
                        "--logprob-threshold gives no text (silence)")
    g.add_argument("--suppress-tokens", "--suppress_tokens", default="-1", metavar="IDS",
                   help="comma-separated token ids never sampled, e.g. --suppress-tokens=-1,50256 (a list "
                        "starting with - needs the =); -1 stands for the non-speech "
                        "set (symbols and punctuation that are not spoken, as openai-whisper's --suppress_tokens); "
                        "'': none of those (task and start tokens are always suppressed)")
    g.add_argument("--without-timestamps", action="store_true",
                   help="decode text only, without timestamp tokens (a segment per window)")
    g.add_argument("--prefix", default=None, help="text forced at the start of each file's first window")
    g.add_argument("--hotwords", default=None,
                   help="words to favour (names, jargon): put in every window's prompt, before the previous text")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages text tokens already sampled in a window (faster-whisper's; 1: off)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="forbid repeating any n-gram of this many tokens within a window (faster-whisper's; 0: off)")


def _long_form_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("long files")
    g.add_argument("--long-form", default="sequential", choices=["sequential", "chunked"],
                   help="files over 30 s: the reference's seek loop, or 30 s chunks with stride decoded in "
                        "parallel and stitched")
    g.add_argument("--chunk-stride", type=float, default=5.0, help="chunked: seconds of overlap on each side")
    g.add_argument("--condition-on-previous-text", default=True, action=argparse.BooleanOptionalAction,
                   help="sequential: prompt each window with the text before it")
    g.add_argument("--initial-prompt", default=None,
                   help="text to prompt with: sequential, the first window of every file (its text then "
                        "carries on); chunked, every chunk (chunks decode in parallel, without text before them)")
    g.add_argument("--carry-initial-prompt", action="store_true",
                   help="sequential: keep the initial prompt at the head of every window's prompt")
    g.add_argument("--hallucination-silence-threshold", type=float, default=None, metavar="SECONDS",
                   help="sequential with --word-timestamps: drop a likely hallucination between silences longer "
                        "than this and skip the silence around it (the reference's option; default off)")
    g.add_argument("--hallucination-filter", action="store_true",
                   help="drop segments that match known hallucination patterns (improbable or repetitive at every "
                        "fallback temperature, text over likely non-speech, one phrase repeated) from the text; "
                        "the record keeps them in dropped_segments with the reason")
    g.add_argument("--clip-timestamps", default=None, metavar="START,END,...",
                   help="sequential: transcribe only these spans, in seconds (the reference's option; a last "
                        "start without an end runs to the end of the file)")
    g.add_argument("--skip-non-speech", type=_seconds_or_off, default=5.0, metavar="SECONDS|off",
                   help="files over 30 s: stretches this long without speech (Silero voice activity) are not "
                        "decoded, and a window after 30 s or more of them starts without the text before "
                        "(default 5; off: every window is decoded, as the reference does)")
    g.add_argument("--vad", action="store_true",
                   help="voice-activity detection (Silero): decode only the speech, put back to back "
                        "(faster-whisper's vad_filter); chunked: chunks cut at pauses")
    g.add_argument("--vad-threshold", type=float, default=0.5, help="speech probability of a voiced frame")
    g.add_argument("--vad-min-silence-ms", type=int, default=None,
                   help="shorter pauses stay inside speech (default 2000; chunked: 160, so regions pack fuller chunks)")
    g.add_argument("--audio-workers", type=_workers, default="auto",
                   help="threads decoding audio (and finding speech) ahead of the device; auto: one per "
                        "CPU core this process may use")
    g.add_argument("--spool-after", type=float, default=600.0, metavar="SECONDS",
                   help="files longer than this are decoded to a spool on disk and framed from there "
                        "(memory does not grow with a file's length)")
    g.add_argument("--spool-dir", default=None,
                   help="where spools go (default: the system temp folder; use a disk, not tmpfs)")
    g.add_argument("--max-audio-in-memory", type=float, default=7200.0, metavar="SECONDS",
                   help="audio held in memory by files read ahead and being decoded (spooled files hold none)")


def _workers(text: str) -> int:
    """--audio-workers: a positive count, or "auto" (the CPU cores this process may use)."""
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or auto, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {count}")
    return count


def _seconds_or_off(text: str) -> Optional[float]:
    """A --skip-non-speech value: seconds (>= 0), or off (None)."""
    if text.strip().lower() == "off":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0 or off, got {text!r}")
    return seconds


def _word_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("words and subtitles")
    g.add_argument("--word-timestamps", action="store_true",
                   help="start/end/probability of every word, in each segment's 'words'")
    g.add_argument("--highlight-words", action="store_true",
                   help="srt/vtt with --word-timestamps: underline each word as it is spoken")
    g.add_argument("--max-line-width", type=int, default=None,
                   help="srt/vtt with --word-timestamps: characters per line before a break")
    g.add_argument("--max-line-count", type=int, default=None,
                   help="srt/vtt with --word-timestamps: lines per cue")
    g.add_argument("--max-words-per-line", type=int, default=None,
                   help="srt/vtt with --word-timestamps: words per cue (without --max-line-width)")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    from .checkpoints.hub import DEFAULT_MODEL

    g = parser.add_argument_group("model, devices and processes")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"local checkpoint, hub repo id or short name (default {DEFAULT_MODEL})")
    g.add_argument("--device", default=None, choices=["cpu", "gpu", "tpu"],
                   help="the JAX platform to run on (gpu: NVIDIA, CUDA); an error if JAX cannot use it here "
                        "(default: JAX's choice, the accelerator if there is one; or JAX_PLATFORMS)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute and weight dtype; auto: bfloat16 on TPUs and GPUs with bf16 units (A100, H100, "
                        "L4 and newer), float16 on older GPUs (T4, V100); on a CPU, what `whisper-nnx calibrate` "
                        "measured faster on this machine (float32 until it is run; bfloat16 pays only on some "
                        "CPUs: see benchmarks/RESULTS.md for speed and WER)")
    g.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 weight-only quantization: less weight memory, not faster on CPU")
    g.add_argument("--continuous-batching", action="store_true",
                   help="greedy and sampling decode over decoder slots shared by the batches in flight: a "
                        "window that ends frees its slot for the next one (a new window or a fallback retry) "
                        "instead of its batch waiting for its slowest row; one process, no mesh; beam search "
                        "decodes whole batches")
    g.add_argument("--mesh", default=None,
                   help="device mesh data=D,model=M (-1: the rest), e.g. data=-1 or data=4,model=2; "
                        "default: one device")
    g.add_argument("--dcn-mesh", default=None,
                   help="multi-host: how data/model span hosts, e.g. data=2 (then --mesh is per host)")
    g.add_argument("--allow-replicated-weights", action="store_true",
                   help="accept weights of >= 1 MiB that the mesh cannot split (replicated instead)")
    g.add_argument("--sharding", default="dp+tp", choices=["dp", "tp", "dp+tp"],
                   help="partition-rule preset mapping logical axes onto the mesh")
    g.add_argument("--coordinator", default=None,
                   help="multi-process: host:port of process 0 (or WHISPER_NNX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, default=None,
                   help="multi-process: how many processes (or WHISPER_NNX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None,
                   help="multi-process: this process's index, 0 to N-1 (or WHISPER_NNX_PROCESS_ID)")
    g.add_argument("--distributed", action="store_true",
                   help="multi-process with the cluster detected by JAX (TPU pod slices, SLURM)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: an actor pool on the cluster at ADDRESS (none: a local cluster "
                        "started for the run); this process writes the results")
    g.add_argument("--ray-actors", type=int, default=1, help="--ray: actors, one per accelerator host")
    g.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="--ray: CPUs Ray reserves for each actor")
    g.add_argument("--ray-gpus-per-actor", type=float, default=0.0, help="--ray: GPUs Ray reserves for each actor")
    g.add_argument("--ray-resources", default=None, metavar="JSON",
                   help='--ray: custom resources per actor, e.g. \'{"TPU": 4}\'')
    g.add_argument("--ray-rows", type=int, default=None,
                   help="--ray: input rows per actor call (default 4 x --batch-size)")
    g.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="JAX persistent compilation cache, so later runs skip compiling (default: "
                        "$WHISPER_NNX_COMPILE_CACHE, else ~/.cache/whisper-nnx/jax-compile; 'off' disables)")


def add_eval_flags(e: argparse.ArgumentParser) -> None:
    """`eval`: the run's flags and --score-only."""
    add_run_flags(e)
    e.add_argument("--score-only", action="store_true",
                   help="score the records already in --output-dir (a finished or resumed run) against the "
                        "inputs' references without transcribing: no model is loaded, nothing but eval.json "
                        "and eval.md is written")


def add_convert_flags(c: argparse.ArgumentParser) -> None:
    c.add_argument("model", help="local checkpoint, hub repo id or short name")
    c.add_argument("out_dir", help="the folder to write")
    c.add_argument("--dtype", default="keep", choices=["keep", "float32", "float16", "bfloat16"],
                   help="weight dtype to store (keep: the checkpoint's)")


def add_calibrate_flags(k: argparse.ArgumentParser) -> None:
    from .checkpoints.hub import DEFAULT_MODEL

    k.add_argument("--model", default=DEFAULT_MODEL, help="the model size to time (random weights of its shapes)")
    k.add_argument("--batch-size", type=int, default=8, help="rows of the timed window")
    k.add_argument("--steps", type=int, default=64, help="greedy tokens of the timed window")
    k.add_argument("--repeats", type=int, default=3, help="timed rounds, the dtypes alternating (best kept)")
