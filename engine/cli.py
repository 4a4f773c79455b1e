"""`whisper-nnx`: the command line.

    whisper-nnx transcribe INPUT... [--model NAME_OR_PATH] [--output-dir DIR] [--formats ...]
    whisper-nnx convert MODEL OUT_DIR [--dtype float32|float16|bfloat16]
    whisper-nnx calibrate [--model NAME]   (float32 or bfloat16 for --dtype auto on this CPU)

INPUT is audio/video files, directories (searched recursively for media files) or manifests
(`.jsonl` with a `path` field, `.txt` with one path per line). `DIR/results.jsonl` receives
one JSON object per input, flushed as each is done; per-format files go beside it. `--dry-run`
lists the inputs and prints what the run would do (dry_run.py), without the model or JAX.

This module maps the flags (cli_flags.py) onto TranscribeOptions and a `run.BulkRun`, which does
the run; it turns what the run raises into the exit statuses.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from absl import logging

from .calibrate import calibrate_command
from .cli_flags import HelpFormatter, add_calibrate_flags, add_convert_flags, add_eval_flags, add_run_flags
from .cli_process import check_device, configure_logging, select_device
from .inputs import SourceOptions
from .run import EXIT_FAILED, EXIT_INPUT_ERRORS, EXIT_OK, EXIT_USAGE, BulkRun, FinishHook, LocalRecords, ModelSpec
from .run import RunFailed, UsageError

if TYPE_CHECKING:
    from .options import TranscribeOptions

# what other code reads from here: the exit statuses (launch/ scripts, tests) are the run's
__all__ = ["EXIT_FAILED", "EXIT_INPUT_ERRORS", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser",
           "fallback_temperatures", "main", "transcribe_options"]


def fallback_temperatures(start: float, increment: float | None) -> tuple[float, ...]:
    """start, start + increment, ... never above 1.0: the reference CLI's
    `np.arange(start, 1.0 + 1e-6, increment)`; no increment: just `start`."""
    if not increment:
        return (start,)
    steps = math.floor((1.0 + 1e-6 - start) / increment) if start <= 1.0 else 0
    return tuple(round(start + i * increment, 6) for i in range(max(steps, 0) + 1))


def _formats(args: argparse.Namespace) -> tuple[str, ...]:
    """--formats as a tuple, without repeats; `all` (openai-whisper's --output_format all) is
    every text format (writers.FORMATS: json, txt, srt, vtt, tsv), parquet only when named."""
    from .writers import FORMATS

    formats: list[str] = []
    for name in (f.strip() for f in args.formats.split(",")):
        formats.extend(f for f in (FORMATS if name == "all" else (name,) if name else ()) if f not in formats)
    return tuple(formats)


def _check_options(args: argparse.Namespace) -> tuple[tuple[str, ...], "TranscribeOptions"]:
    """Everything that can be checked before loading the model: (formats, TranscribeOptions)."""
    from .writers import check_formats

    formats = _formats(args)
    try:
        check_formats(tuple(f for f in formats if f != "parquet"))
        if "parquet" in formats:  # one table of the run's records, written at its end
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


def _transcribe(args: argparse.Namespace, finish: Optional[FinishHook] = None) -> int:
    """The transcribe command: flags -> a BulkRun; `finish` runs on process 0 once the records
    are written (eval's scoring)."""
    formats, options = _check_options(args)
    select_device(args.device)  # before JAX starts a backend
    from whisper_nnx.sharding import multihost

    # Before any other JAX call: join the other processes, if this run has several.
    multi = multihost.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    if args.ray is not None and multi:
        raise UsageError("--ray runs one driver process; the actors spread the work (drop the multi-process flags)")
    from .compile_cache import enable_compilation_cache
    enable_compilation_cache(args.compile_cache)
    if args.ray is None:  # with --ray the actors run the model (JAX_PLATFORMS travels to them)
        check_device(args.device)
    outcome = BulkRun(args.inputs, args.output_dir, options=options, formats=formats, layout=_layout(args),
                      producer=_producer(args), sources=_sources(args),
                      resume=args.resume, retry_errors=args.retry_errors, staging_dir=args.staging_dir,
                      upload_every_s=args.upload_every, show=not args.quiet, progress=not args.no_progress,
                      finish=finish, output_layout=args.output_layout).run()
    if outcome.lead:
        print(outcome.line(), file=sys.stderr)
    return outcome.exit_code


def _dry_run(args: argparse.Namespace) -> int:
    """--dry-run: what the run would do (dry_run.py); no model, no JAX, nothing written."""
    from .dry_run import dry_run
    from .writers import check_formats

    formats = _formats(args)
    try:
        check_formats(tuple(f for f in formats if f != "parquet"))
    except ValueError as err:
        raise UsageError(f"--formats: {err}") from None
    if args.dry_run_probe < 0:
        raise UsageError("--dry-run-probe must be >= 0")
    for line in dry_run(args.inputs, args.output_dir, _sources(args), resume=args.resume, retry_errors=args.retry_errors,
                        probe=args.dry_run_probe):
        print(line)
    return EXIT_OK


def _producer(args: argparse.Namespace):
    """Where the run's records come from: the model in this process, or Ray actors (--ray)."""
    if args.ray is None:
        return LocalRecords(ModelSpec(args.model, args.dtype, args.quantize, args.mesh, args.dcn_mesh,
                                      args.sharding, args.allow_replicated_weights, args.continuous_batching))
    import json

    from .ray_job import RayRecords

    return RayRecords(args.ray, model=args.model, dtype=args.dtype, quantize=args.quantize,
                      compile_cache=args.compile_cache, actors=args.ray_actors, rows_per_call=args.ray_rows,
                      cpus_per_actor=args.ray_cpus_per_actor, gpus_per_actor=args.ray_gpus_per_actor,
                      resources=json.loads(args.ray_resources) if args.ray_resources else None)


def transcribe_options(args: argparse.Namespace):
    """The run's TranscribeOptions from the command line's flags (the one place they meet)."""
    from .options import TranscribeOptions

    return TranscribeOptions.from_kwargs(
        language=None if args.language == "auto" else args.language, task=args.task, batch_size=args.batch_size,
        temperature=fallback_temperatures(args.temperature, args.temperature_increment_on_fallback),
        beam_size=args.beam_size or None, best_of=args.best_of, patience=args.patience,
        length_penalty=args.length_penalty, compression_ratio_threshold=args.compression_ratio_threshold,
        logprob_threshold=args.logprob_threshold, no_speech_threshold=args.no_speech_threshold,
        without_timestamps=args.without_timestamps, suppress_tokens=args.suppress_tokens, long_form=args.long_form,
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


def _sources(args: argparse.Namespace) -> SourceOptions:
    return SourceOptions(args.audio_column, args.id_column, args.text_column, args.follow_row_paths)


def _eval(args: argparse.Namespace) -> int:
    """Transcribe like `transcribe`, then write eval.json / eval.md and print the table."""
    from . import evaluation

    try:
        evaluation.check_available()
    except evaluation.EvalUnavailable as err:
        raise UsageError(str(err)) from None
    if args.score_only:
        return _score_only(args)

    def finish(entries, written, out, summary):
        settings = {"model": args.model, "dtype": args.dtype, "long_form": args.long_form,
                    "batch_size": args.batch_size, "beam_size": args.beam_size, "vad": args.vad,
                    "language": args.language,
                    "without_timestamps": args.without_timestamps, "inputs": list(args.inputs)}
        result = evaluation.report(evaluation.score(entries, written), summary, settings)
        print(evaluation.write(out, result))
        print(f"whisper-nnx eval: {out / evaluation.EVAL_JSON}, {out / evaluation.EVAL_MD}", file=sys.stderr)
        return [evaluation.EVAL_JSON, evaluation.EVAL_MD]

    return _transcribe(args, finish)


def _score_only(args: argparse.Namespace) -> int:
    """eval --score-only: score the records already in --output-dir (no model, nothing transcribed)."""
    from pathlib import Path

    from . import evaluation, storage
    from .inputs import expand_inputs

    if storage.is_url(str(args.output_dir)):
        raise UsageError("--score-only reads a local --output-dir (copy the bucket's results.jsonl to a folder)")
    settings = {"inputs": list(args.inputs)}
    try:
        _, table = evaluation.score_folder(expand_inputs(args.inputs, _sources(args)), Path(args.output_dir), settings)
    except evaluation.NothingToScore as err:
        raise UsageError(str(err)) from None
    out = Path(args.output_dir)
    print(table)
    print(f"whisper-nnx eval: {out / evaluation.EVAL_JSON}, {out / evaluation.EVAL_MD}", file=sys.stderr)
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints.formats import read_checkpoint, save_converted
    from .checkpoints.hub import resolve_model

    checkpoint = read_checkpoint(resolve_model(args.model))
    out = save_converted(checkpoint, args.out_dir, None if args.dtype == "keep" else args.dtype)
    print(f"wrote {out} ({checkpoint.source_format} -> nnx, {checkpoint.dims})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="whisper-nnx", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio/video files", formatter_class=HelpFormatter)
    add_run_flags(t)
    t.set_defaults(run=_transcribe)

    e = sub.add_parser("eval", help="transcribe, then score against each input's reference text (WER, CER)",
                       formatter_class=HelpFormatter)
    add_eval_flags(e)
    e.set_defaults(run=_eval)

    c = sub.add_parser("convert", help="convert a checkpoint to whisper-nnx's fast-loading form",
                       formatter_class=HelpFormatter)
    add_convert_flags(c)
    c.set_defaults(run=_convert)

    k = sub.add_parser("calibrate", help="measure float32 against bfloat16 on this CPU: what --dtype auto takes here",
                       formatter_class=HelpFormatter)
    add_calibrate_flags(k)
    k.set_defaults(run=calibrate_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints.tensor_files import CheckpointError
    from .results import RunLocked

    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        if getattr(args, "dry_run", False):
            return _dry_run(args)
        return args.run(args)
    # UsageError, AudioDecodeError and ShardingError are ValueErrors: setup, before any record (a
    # ValueError once records are being written comes as RunFailed: the run failing, exit 1)
    except (ValueError, RunLocked, CheckpointError) as err:
        print(f"whisper-nnx: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - the run failed: say so, with the traceback in the log
        logging.exception("the run failed")
        reason = str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"
        print(f"whisper-nnx: run failed: {reason}; rerun with --resume", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
