"""`whisper-nnx`: the command line.

    whisper-nnx transcribe INPUT... [--model NAME_OR_PATH] [--output-dir DIR] [--formats ...]
    whisper-nnx convert MODEL OUT_DIR [--dtype float32|float16|bfloat16]

INPUT is audio/video files, directories (searched recursively for media files) or manifests
(`.jsonl` with a `path` field, `.txt` with one path per line). `DIR/results.jsonl` receives
one JSON object per input, flushed as each is done; per-format files go beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from absl import flags, logging

from . import storage
from .inputs import SourceOptions, expand_inputs


def fallback_temperatures(start: float, increment: float | None) -> tuple[float, ...]:
    """start, start + increment, ... never above 1.0: the reference CLI's
    `np.arange(start, 1.0 + 1e-6, increment)`; no increment: just `start`."""
    if not increment:
        return (start,)
    steps = math.floor((1.0 + 1e-6 - start) / increment) if start <= 1.0 else 0
    return tuple(round(start + i * increment, 6) for i in range(max(steps, 0) + 1))


# Exit statuses (README, "Bulk transcription"); launch/ scripts read them.
EXIT_OK = 0  # every input has a transcript
EXIT_FAILED = 1  # the run itself failed: rerun with --resume
EXIT_USAGE = 2  # bad options or setup, found before any record was written
EXIT_INPUT_ERRORS = 3  # the run finished; some inputs have error records (see results.jsonl)


class UsageError(ValueError):
    """Options or setup that cannot work: reported before the model loads."""


def _check_options(args: argparse.Namespace):
    """Everything that can be checked before loading the model: (formats, TranscribeOptions)."""
    from .writers import check_formats

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    args.parquet = "parquet" in formats  # one table of the run's records, written at its end
    formats = tuple(f for f in formats if f != "parquet")
    try:
        check_formats(formats)
        if args.parquet:
            from .results_table import check_available as check_parquet
            check_parquet()
        layout = _layout(args)
    except ValueError as err:
        raise UsageError(f"--formats / subtitle layout: {err}") from None
    if layout.used and not args.word_timestamps:
        raise UsageError("--highlight-words / --max-line-width / --max-line-count / --max-words-per-line "
                         "need --word-timestamps")
    if args.vad or args.skip_non_speech is not None:
        from .vad import VadUnavailable, check_available

        try:
            check_available()
        except VadUnavailable as err:
            flag = "--vad" if args.vad else "--skip-non-speech (on by default; off: --skip-non-speech off)"
            raise UsageError(f"{flag}: {err}") from None
    try:
        options = transcribe_options(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return formats, options


def _transcribe(args: argparse.Namespace, finish=None) -> int:
    """The transcribe command; `finish(entries, out, summary)` runs on process 0 after the records
    are written (eval's scoring)."""
    formats, options = _check_options(args)
    import jax

    from whisper_nnx.sharding import multihost

    from . import results as results_io

    # Before any other JAX call: join the other processes, if this run has several.
    multi = multihost.initialize(args.coordinator, args.num_processes, args.process_id,
                                 auto=args.distributed)
    from .compile_cache import enable_compilation_cache
    enable_compilation_cache(args.compile_cache)
    entries = list(expand_inputs(args.inputs, SourceOptions(args.audio_column, args.id_column, args.text_column)))
    if not entries:
        raise UsageError("no inputs found")
    if args.ray is not None and multi:
        raise UsageError("--ray runs one driver process; the actors spread the work (drop the multi-process flags)")
    remote = None
    if storage.is_url(args.output_dir):
        if multi:
            raise UsageError("an --output-dir URL takes a single-process run; give each process a local "
                             "--output-dir, or use one process per host with its own URL")
        from .remote_output import open_remote
        remote = open_remote(args.output_dir, args.staging_dir, formats, args.upload_every)
        out = remote.staging
    else:
        out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = results_io.RunLock(out) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        if remote is not None:
            found = remote.pull()  # the bucket's records are the truth
            logging.info("%s holds %d records", args.output_dir, found)
        try:
            code = _run_locked(args, formats, options, entries, out, multi, finish, remote)
        except BaseException:
            if remote is not None:  # what was written reaches the bucket; the rest is redone on resume
                remote.flush()
            raise
        if remote is not None:
            remote.finish()
        return code


def _run_locked(args: argparse.Namespace, formats: tuple[str, ...], options, entries: list, out: Path,
                multi: bool, finish=None, remote=None) -> int:
    import jax

    from whisper_nnx.sharding import multihost

    from . import records
    from . import results as results_io

    multihost.barrier("whisper-nnx-start")  # every process has read the old results before any writes
    if jax.process_index() == 0:
        _prepare_output(out, args, multi)
    multihost.barrier("whisper-nnx-repaired")
    plan = results_io.plan_run(entries, results_io.all_records(out))
    if plan.skipped:
        logging.info("resuming: %d of %d entries already have records", plan.skipped, len(entries))
    inputs = multihost.process_share(plan.todo)  # contiguous block per process, in order
    summary, failed = _write_records(args, formats, options, out, plan, inputs, multi, remote)
    if multi:
        summary = _merge_processes(out, summary)
    if jax.process_index() != 0:  # its own records' failures
        return EXIT_INPUT_ERRORS if failed else EXIT_OK
    written = results_io.all_records(out)  # every process's, earlier runs' too
    failed = sum(map(records.is_failure, written))
    if args.parquet:
        from .results_table import write_parquet
        write_parquet(out, written)
    print(f"whisper-nnx: {summary['files']} files, {summary['audio_hours']:.3f} h of audio, "
          f"{summary['errors']} errors, {summary['wall_s']:.1f} s ({summary['real_time_factor']}x real time); "
          f"results in {out / results_io.RESULTS}", file=sys.stderr)
    if finish is not None:
        finish(entries, written, out, summary)
    return EXIT_INPUT_ERRORS if failed else EXIT_OK


def _prepare_output(out: Path, args: argparse.Namespace, multi: bool) -> None:
    """Process 0, before any record is written: finish an interrupted merge, refuse old results
    without --resume, repair records cut short, merge an earlier multi-process run's files and
    drop the records to retry."""
    from . import results as results_io

    results_io.finish_merge(out)
    if results_io.all_records(out) and not args.resume:
        raise UsageError(f"{out} already holds results: add --resume to continue that run, or choose "
                         "another --output-dir")
    for path in [out / results_io.RESULTS, *results_io.process_files(out)]:
        if results_io.repair(path):
            logging.warning("%s: removed a record cut short by an earlier kill", path)
    if not multi:  # an earlier multi-process run's records join results.jsonl first
        results_io.merge_process_results(out)
    retried = results_io.drop_retried(out, args.retry_errors)
    if retried:
        logging.warning("resuming: retrying %d entries whose records were errors", retried)


def _load_transcriber(args: argparse.Namespace):
    """The model on the run's mesh (none: one device) and the run facts each record carries."""
    from whisper_nnx.sharding import rules_for
    from whisper_nnx.sharding.mesh import describe, make_mesh

    from .transcribe import Transcriber

    mesh = make_mesh(args.mesh, dcn=args.dcn_mesh) if args.mesh else None
    if mesh is not None:
        logging.info("mesh %s, sharding preset %s", describe(mesh)["shape"], args.sharding)
    transcriber = Transcriber(args.model, dtype=args.dtype, mesh=mesh,
                              rules=rules_for(args.sharding) if mesh is not None else None,
                              allow_replicated=args.allow_replicated_weights, quantize=args.quantize)
    return transcriber, _run_info(args, describe(mesh) if mesh is not None else None)


def _run_info(args: argparse.Namespace, mesh: dict | None) -> dict:
    """The run facts every record carries."""
    return {"model": args.model, "dtype": args.dtype, "quantize": args.quantize, "long_form": args.long_form,
            "mesh": mesh, "sharding": args.sharding if mesh is not None else None}


def _ray_records(args: argparse.Namespace, options, entries: list):
    """Records of `entries` from a Ray Data actor pool (engine/ray_job.py)."""
    import json

    from .ray_job import connect, transcribe_on_ray

    connect(args.ray)
    logging.info("Ray: %d actors for %d inputs", args.ray_actors, len(entries))
    return transcribe_on_ray(
        entries, actors=args.ray_actors, rows_per_call=args.ray_rows or 4 * args.batch_size,
        actor_args={"model": args.model, "dtype": args.dtype, "options": options, "quantize": args.quantize,
                    "compile_cache": args.compile_cache},
        cpus_per_actor=args.ray_cpus_per_actor, gpus_per_actor=args.ray_gpus_per_actor,
        resources=json.loads(args.ray_resources) if args.ray_resources else None)


def _write_records(args: argparse.Namespace, formats: tuple[str, ...], options, out: Path, plan,
                   inputs: list, multi: bool, remote=None) -> tuple[dict, int]:
    """Transcribe this process's `inputs` and write one record per entry (duplicates after the
    record they repeat): (the progress summary, how many of them are failures)."""
    import jax

    from . import records
    from . import results as results_io
    from .progress import Progress, write_summary
    from .sink import ResultSink

    own_file = f"results.process-{jax.process_index():05d}.jsonl" if multi else results_io.RESULTS
    todo = [e for e in inputs if e.error is None]
    if args.ray is not None:  # the actors hold the model; this process only writes
        run_info = _run_info(args, None)
        produced = _ray_records(args, options, todo)
    else:
        transcriber, run_info = _load_transcriber(args)
        produced = (record for _, record in transcriber.transcribe_iter([e.source() for e in todo], options))
    ready = plan.ready if jax.process_index() == 0 else []
    progress = Progress(len(inputs) + len(ready) + sum(len(plan.repeats.get(e.key, ())) for e in inputs),
                        enabled=not args.no_progress)
    printed = None if args.quiet else lambda r: print(f"{r['path']}: {r['error'] or r['text']}", flush=True)
    hooks = [h for h in (printed, remote.written if remote is not None else None) if h is not None]
    echo = (lambda r: [hook(r) for hook in hooks]) if hooks else None
    with ResultSink(out, formats, _layout(args), file_name=own_file, extra=run_info, progress=progress,
                    echo=echo) as sink:
        for name, _, first in ready:  # repeats of files done in an earlier run
            sink.write(records.duplicate(name, first))
        for entry in inputs:
            if entry.error is not None:  # a manifest line that names no file
                sink.write(records.failure(entry.name, entry.error, records.INPUT))
                for name, _, first in plan.repeats_of(entry.name):
                    sink.write(records.duplicate(name, first))
        for record in produced:
            sink.write(record)
            for name, _, first in plan.repeats_of(record["path"]):  # after the record they repeat
                sink.write(records.duplicate(name, first))
    summary = progress.summary(plan.skipped)
    write_summary(out, summary, f"summary.process-{jax.process_index():05d}.json" if multi else "summary.json")
    return summary, sink.failed


def _merge_processes(out: Path, summary: dict) -> dict:
    """Several processes: process 0 merges every process's records and summaries."""
    import jax

    from whisper_nnx.sharding import multihost

    from . import results as results_io
    from .progress import merge_summaries

    multihost.barrier("whisper-nnx-results-written")
    if jax.process_index() == 0:
        results_io.merge_process_results(out)
        summary = merge_summaries(out)
    multihost.barrier("whisper-nnx-results-merged")
    return summary


def transcribe_options(args: argparse.Namespace):
    """The run's TranscribeOptions from the command line's flags (the one place they meet)."""
    from .options import TranscribeOptions

    return TranscribeOptions.from_kwargs(
        language=None if args.language == "auto" else args.language, task=args.task, batch_size=args.batch_size,
        temperature=fallback_temperatures(args.temperature, args.temperature_increment_on_fallback),
        beam_size=args.beam_size or None, best_of=args.best_of, patience=args.patience,
        length_penalty=args.length_penalty, compression_ratio_threshold=args.compression_ratio_threshold,
        logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
        without_timestamps=args.without_timestamps, long_form=args.long_form,
        condition_on_previous_text=args.condition_on_previous_text, initial_prompt=args.initial_prompt,
        chunk_stride_s=args.chunk_stride, audio_workers=args.audio_workers, word_timestamps=args.word_timestamps,
        prefix=args.prefix, hotwords=args.hotwords, carry_initial_prompt=args.carry_initial_prompt, vad=args.vad,
        vad_threshold=args.vad_threshold, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, clip_timestamps=args.clip_timestamps,
        hallucination_silence_threshold=args.hallucination_silence_threshold,
        hallucination_filter=args.hallucination_filter, skip_non_speech_s=args.skip_non_speech,
        language_detection_segments=args.language_detection_segments,
        language_detection_threshold=args.language_detection_threshold, language_per_window=args.language_per_window,
        spool_after_s=args.spool_after, spool_dir=args.spool_dir, max_audio_in_memory_s=args.max_audio_in_memory,
        **({} if args.vad_min_silence_ms is None else {"vad_min_silence_ms": args.vad_min_silence_ms}))


def _layout(args: argparse.Namespace):
    from .sink import SubtitleLayout

    return SubtitleLayout(args.highlight_words, args.max_line_width or None, args.max_line_count or None,
                          args.max_words_per_line or None)


def _eval(args: argparse.Namespace) -> int:
    """Transcribe like `transcribe`, then write eval.json / eval.md and print the table."""
    from . import evaluation

    try:
        evaluation.check_available()
    except evaluation.EvalUnavailable as err:
        raise UsageError(str(err)) from None

    def finish(entries, written, out, summary):
        settings = {"model": args.model, "dtype": args.dtype, "long_form": args.long_form,
                    "batch_size": args.batch_size, "beam_size": args.beam_size, "vad": args.vad,
                    "language": args.language,
                    "without_timestamps": args.without_timestamps, "inputs": list(args.inputs)}
        result = evaluation.report(evaluation.score(entries, written), summary, settings)
        print(evaluation.write(out, result))
        print(f"whisper-nnx eval: {out / evaluation.EVAL_JSON}, {out / evaluation.EVAL_MD}", file=sys.stderr)

    return _transcribe(args, finish)


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints.formats import read_checkpoint, save_converted
    from .checkpoints.hub import resolve_model

    checkpoint = read_checkpoint(resolve_model(args.model))
    out = save_converted(checkpoint, args.out_dir, None if args.dtype == "keep" else args.dtype)
    print(f"wrote {out} ({checkpoint.source_format} -> nnx, {checkpoint.dims})")
    return 0


def _input_flags(parser: argparse.ArgumentParser) -> None:
    from .writers import FORMATS

    g = parser.add_argument_group("inputs and outputs")
    g.add_argument("inputs", nargs="+", metavar="INPUT")
    g.add_argument("--output-dir", default="whisper-nnx-out")
    g.add_argument("--formats", default="json,txt",
                   help=f"comma-separated from {','.join(FORMATS)},parquet (parquet: one results.parquet "
                        "of every record, written at the end of the run)")
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
    g.add_argument("--resume", action="store_true",
                   help="continue a run in --output-dir: skip entries with a record, redo the rest and "
                        "entries whose record is a run error (out of memory, device failure)")
    g.add_argument("--retry-errors", action="store_true",
                   help="with --resume: also redo entries whose record is an input error (bad audio)")
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
    g.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--beam-size", type=int, default=5, help="beams at temperature 0; 0 or 1: greedy-like")
    g.add_argument("--best-of", type=int, default=5, help="samples per window at temperature > 0")
    g.add_argument("--patience", type=float, default=None)
    g.add_argument("--length-penalty", type=float, default=None,
                   help="alpha of ((5 + len) / 6) ** alpha; default: divide by length")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--temperature-increment-on-fallback", type=float, default=0.2,
                   help="retry failing windows at temperature + k * this, up to 1.0; 0 disables")
    g.add_argument("--compression-ratio-threshold", type=float, default=2.4)
    g.add_argument("--logprob-threshold", type=float, default=-1.0)
    g.add_argument("--no-speech-threshold", type=float, default=0.6)
    g.add_argument("--without-timestamps", action="store_true")
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
    g.add_argument("--audio-workers", type=int, default=2, help="threads decoding audio ahead of the device")
    g.add_argument("--spool-after", type=float, default=600.0, metavar="SECONDS",
                   help="files longer than this are decoded to a spool on disk and framed from there "
                        "(memory does not grow with a file's length)")
    g.add_argument("--spool-dir", default=None,
                   help="where spools go (default: the system temp folder; use a disk, not tmpfs)")
    g.add_argument("--max-audio-in-memory", type=float, default=7200.0, metavar="SECONDS",
                   help="audio held in memory by files read ahead and being decoded (spooled files hold none)")


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
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute and weight dtype; bfloat16 runs matmuls on native bf16 units (TPU, GPU, "
                        "CPUs with AVX512-BF16/AMX): see benchmarks/RESULTS.md for speed and WER")
    g.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 weight-only quantization: less weight memory, not faster on CPU")
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
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    g.add_argument("--distributed", action="store_true",
                   help="multi-process with the cluster detected by JAX (TPU pod slices, SLURM)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: an actor pool on the cluster at ADDRESS (none: a local cluster "
                        "started for the run); this process writes the results")
    g.add_argument("--ray-actors", type=int, default=1, help="--ray: actors, one per accelerator host")
    g.add_argument("--ray-cpus-per-actor", type=float, default=1.0)
    g.add_argument("--ray-gpus-per-actor", type=float, default=0.0)
    g.add_argument("--ray-resources", default=None, metavar="JSON",
                   help='--ray: custom resources per actor, e.g. \'{"TPU": 4}\'')
    g.add_argument("--ray-rows", type=int, default=None,
                   help="--ray: input rows per actor call (default 4 x --batch-size)")
    g.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="JAX persistent compilation cache, so later runs skip compiling (default: "
                        "$WHISPER_NNX_COMPILE_CACHE, else ~/.cache/whisper-nnx/jax-compile; 'off' disables)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-nnx", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio/video files")
    _input_flags(t)
    _decoding_flags(t)
    _long_form_flags(t)
    _word_flags(t)
    _model_flags(t)
    t.set_defaults(run=_transcribe)

    e = sub.add_parser("eval", help="transcribe, then score against each input's reference text (WER)")
    _input_flags(e)
    _decoding_flags(e)
    _long_form_flags(e)
    _word_flags(e)
    _model_flags(e)
    e.set_defaults(run=_eval)

    c = sub.add_parser("convert", help="convert a checkpoint to whisper-nnx's fast-loading form")
    c.add_argument("model", help="local checkpoint, hub repo id or short name")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="keep", choices=["keep", "float32", "float16", "bfloat16"])
    c.set_defaults(run=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints.tensor_files import CheckpointError
    from .results import RunLocked

    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "verbose", False))
    try:
        return args.run(args)
    # UsageError, AudioDecodeError and ShardingError are ValueErrors: setup, before any work
    except (ValueError, RunLocked, CheckpointError) as err:
        print(f"whisper-nnx: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - the run failed: say so, with the traceback in the log
        logging.exception("the run failed")
        print(f"whisper-nnx: run failed: {type(err).__name__}: {err}; rerun with --resume", file=sys.stderr)
        return EXIT_FAILED


def _configure_logging(verbose: bool) -> None:
    """Warnings and errors only, unless `verbose`: JAX's backend probing ("Unable to initialize
    backend 'tpu'") and the hub's messages are INFO lines a plain run does not show."""
    import logging as std_logging

    flags.FLAGS.mark_as_parsed()  # absl logging without absl's flag parsing (argparse owns argv)
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    level = std_logging.INFO if verbose else std_logging.WARNING
    for name in ("", "jax", "jax._src.xla_bridge", "huggingface_hub"):  # "": the root logger
        std_logging.getLogger(name).setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
