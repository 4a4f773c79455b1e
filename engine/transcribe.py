"""Python API: a `Transcriber` holds a loaded model, its tokenizer and compiled programs.

`transcribe` / `transcribe_iter` take files of any length: audio is decoded on background
threads, every file is cut into 30 s windows (sequential seek loop or chunked with stride,
`longform.py`) and windows of many files share device batches (`scheduler.py`). Every input
ends as one record, an `error` record when it cannot be used. `decode_clips` is the plain
single-window decode of clips of up to 30 s (the reference's `whisper.decode`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from whisper_nnx.sharding import multihost, rules_for

from . import records
from .audio import (
    CHUNK_LENGTH,
    FRAMES_PER_SECOND,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioDecodeError,
    AudioInput,
    input_name,
    load_audio,
    pad_or_trim,
)
from .checkpoints.formats import read_checkpoint
from .checkpoints.hub import DEFAULT_MODEL, resolve_model
from .checkpoints.weights import load_model
from .decode.alignment import default_alignment_heads
from .decode.generate import Generator
from .decode.languages import LANGUAGES
from .decode.options import DecodeOptions
from .decode.prompts import initial_tokens
from .decode.tokenizer import Tokenizer
from .decode.window_decoder import WindowDecoder, bucket, is_silence, needs_fallback
from .entry import NamedSamples
from .features import WindowFeatures, log_mel_spectrogram_jit
from .options import TranscribeOptions
from .progress import Progress
from .reading import AudioPrefetcher, speech_finder
from .scheduler import WindowScheduler, expected_windows
from .segments import split_segments
from .windows import WindowPipeline, detect_languages

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPES = ("auto", *_DTYPES)  # what `Transcriber(dtype=...)` and --dtype take


def resolve_dtype(dtype: str, device: Optional[jax.Device] = None, model: Optional[str] = None) -> str:
    """The compute dtype `dtype` names on `device` (default: JAX's first): "auto" is bfloat16 on
    TPUs and on GPUs with bfloat16 units (NVIDIA compute capability 8.0 and newer: A100, H100,
    L4, ...), float16 on older GPUs (T4, V100); on a CPU, what `whisper-nnx calibrate` measured
    fastest for `model` on this machine (calibrate.py), float32 where it has not been run (XLA's
    bfloat16 is slower than float32 on many CPUs: RESULTS.md); any other name is itself."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    device = device if device is not None else jax.devices()[0]
    if device.platform == "tpu":
        return "bfloat16"
    if device.platform in ("gpu", "cuda", "rocm"):
        capability = getattr(device, "compute_capability", None)
        try:
            major = int(str(capability).split(".")[0])
        except ValueError:
            return "bfloat16" if device.platform == "rocm" else "float16"
        return "bfloat16" if major >= 8 else "float16"
    from .calibrate import measured_choice
    measured = measured_choice(model) if model is not None else None
    return measured["dtype"] if measured is not None else "float32"


def english_only_notice(model_name: str) -> str:
    """The warning an English-only model gets when no language is given (auto detection): it
    cannot detect one, so every input comes out as English, whatever is spoken."""
    return (f"{model_name} is an English-only model: it transcribes English only, and language auto "
            "(--language auto) means en; use a multilingual model (--model base) to detect languages")


class Transcriber:
    """Load once, transcribe many: `Transcriber("tiny.en").transcribe(["a.wav", "b.flac"])`."""

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "auto", mesh: Optional[Mesh] = None,
                 rules=None, allow_replicated: bool = False, quantize: Optional[str] = None):
        """`mesh` (see whisper_nnx.sharding.make_mesh) with logical-axis `rules` (a preset of
        whisper_nnx.sharding.PRESETS) shards weights, caches and batches; None: one device.
        `quantize="int8"` stores the matmul weights as int8 (see quantize.py: about 4x less
        weight memory at rest; not faster on CPU, where XLA dequantizes before the matmuls)."""
        dtype = resolve_dtype(dtype, mesh.devices.flat[0] if mesh is not None else None, model)
        self.dtype = dtype  # as resolved ("auto": by the device)
        self.checkpoint_path = resolve_model(model)
        checkpoint = read_checkpoint(self.checkpoint_path)
        self.dims = checkpoint.dims
        self.model_name = model
        self.tokenizer = Tokenizer.from_file(checkpoint.directory / "tokenizer.json",
                                             n_vocab=self.dims.n_vocab)
        if mesh is not None and rules is None:
            rules = rules_for("dp+tp")
        self.mesh = mesh
        # Weights are stored in the compute dtype: a bfloat16 decode step then reads half the
        # bytes (it is bound by memory traffic: the 51k x D output table dominates).
        network = load_model(checkpoint, dtype=_DTYPES[dtype], param_dtype=_DTYPES[dtype], mesh=mesh,
                             rules=rules, allow_replicated=allow_replicated)
        if quantize:
            from .model.quantize import quantize_weights
            network = quantize_weights(network, quantize)
        self.generator = Generator(network, mesh=mesh, rules=rules)
        self.alignment_heads = tuple(tuple(h) for h in checkpoint.alignment_heads or ()) or \
            default_alignment_heads(self.dims.n_text_layer, self.dims.n_text_head)
        self.decoder = WindowDecoder(self.generator, self.dims)
        self.features = WindowFeatures()  # long-form windows' log-mel, on the device
        self.batches_in_flight = 2  # handed to the device at once (1: one at a time)
        # On a CPU the device programs of two batches never run at once (the next batch's host
        # work still overlaps): two calls of one compiled encoder at once gave some rows other
        # outputs there (up to 14 off, jax 0.10.2 and 0.12.1; docs/DEVELOPING.md).
        platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
        self.device_turn = threading.Lock() if platform == "cpu" else contextlib.nullcontext()
        self.compiled_batches: set[int] = set()  # batch sizes (bucketed rows) transcribe has decoded
        self.warned: set[str] = set()  # the once-per-Transcriber warnings given (english_only_notice)

    # --- pieces ---------------------------------------------------------------------------

    def mel(self, audio: np.ndarray) -> jax.Array:
        """A batch of up-to-30 s clips [B, N] -> log-mel [B, M, 3000]."""
        return log_mel_spectrogram_jit(jnp.asarray(audio), n_mels=self.dims.n_mels)

    def detect_languages(self, mel: jax.Array) -> list[tuple[str, dict[str, float]]]:
        """Per row of mel [B, M, N]: (best language code, probabilities of every language)."""
        return detect_languages(self.generator, self.tokenizer, mel)

    # --- long-form transcription of files of any length -------------------------------------

    def transcribe(self, inputs: "Inputs", options: Optional[TranscribeOptions] = None,
                   **flat: Any) -> list[records.Transcript]:
        """One record per input, in input order: a `records.Transcript`, read like the record
        results.jsonl holds (`record["text"]`), plus its `tokens`. Options are a
        TranscribeOptions or keyword options (`transcribe(paths, beam_size=5, language="de")`,
        the names of `TranscribeOptions.from_kwargs`); `inputs` as `named_inputs` takes them."""
        inputs = list(named_inputs(inputs))
        results: list[Optional[records.Transcript]] = [None] * len(inputs)
        for index, record in self.transcribe_iter(inputs, options, **flat):
            results[index] = record
        return results  # type: ignore[return-value]

    def warn_ignored_options(self, options: TranscribeOptions) -> None:
        """As the reference's CLI: an English-only model ignores a language other than English
        and the translate task, with a warning rather than silently; with no language given
        (auto), once per Transcriber, that every input is transcribed as English
        (`english_only_notice`)."""
        if self.tokenizer.multilingual:
            return
        if options.language is None and "english-only" not in self.warned:
            self.warned.add("english-only")
            logging.warning("%s", english_only_notice(self.model_name))
        if options.language is not None and options.language.lower() not in ("en", "english"):
            logging.warning("%s is an English-only model but was given language %r; using English instead",
                            self.model_name, options.language)
        if options.decode.task == "translate":
            logging.warning("%s: an English-only model cannot translate; transcribing in English instead",
                            self.model_name)

    def transcribe_iter(self, inputs: "Inputs", options: Optional[TranscribeOptions] = None, *,
                        progress: Optional[Progress] = None, **flat: Any) -> Iterator[tuple[int, records.Transcript]]:
        """(input index, record) for every input, in the order files finish; audio is decoded
        on `options.audio_workers` threads while the device works. Options and inputs as
        `transcribe` takes them (checked here, before the first record is asked for);
        `progress` (the CLI's) is told of every batch the device decodes."""
        options = resolve_options(options, flat, "Transcriber.transcribe_iter()")
        return self._transcribe_iter(named_inputs(inputs), options, progress)

    def _transcribe_iter(self, inputs: Iterable[AudioInput], options: TranscribeOptions,
                         progress: Optional[Progress]) -> Iterator[tuple[int, records.Transcript]]:
        self.warn_ignored_options(options)
        options = options.as_decoded()
        find_speech = speech_finder(options.vad, options.long_form.skip_non_speech_s is not None, options.chunked)
        reading = options.reading
        files = AudioPrefetcher(inputs, workers=reading.audio_workers, max_ahead=max(8, 2 * options.batch_size),
                                max_seconds=reading.max_audio_in_memory_s / 2, spool_after_s=reading.spool_after_s,
                                spool_dir=reading.spool_dir, find_speech=find_speech)
        work = WindowPipeline(self.generator, self.decoder, self.tokenizer, self.alignment_heads, options,
                              features=self.features, device_turn=self.device_turn)
        work = WatchedWork(work, progress, self.compiled_batches)
        scheduler = WindowScheduler(
            work, batch_size=options.batch_size,
            windows_per_file=expected_windows(options.long_form.mode, options.long_form.chunk_stride_s),
            max_admitted_s=reading.max_audio_in_memory_s / 2, in_flight=self.batches_in_flight)
        for index, record in scheduler.run(files):
            yield index, record

    # --- single windows (clips of up to 30 s, as whisper.decode) ---------------------------

    def decode_clips(self, inputs: "Inputs", options: Optional[TranscribeOptions] = None,
                     **flat: Any) -> list[records.Transcript]:
        """One record per input clip of up to 30 s, each decoded as one window of its audio
        zero-padded to 30 s (the reference's `whisper.decode`); longer clips get an error.
        Options and inputs as `transcribe` takes them."""
        options = resolve_options(options, flat, "Transcriber.decode_clips()")
        inputs = list(named_inputs(inputs))
        self.warn_ignored_options(options)
        results: list[Optional[records.Transcript]] = [None] * len(inputs)
        good: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(inputs):
            try:
                audio = load_audio(item) if not isinstance(item, np.ndarray) else np.asarray(item, np.float32)
                if audio.shape[0] > N_SAMPLES:
                    raise AudioDecodeError(input_name(item), f"{audio.shape[0] / SAMPLE_RATE:.1f} s is longer "
                                           f"than one {CHUNK_LENGTH} s window: use transcribe")
                good.append((i, audio))
            except AudioDecodeError as err:
                results[i] = records.failure(input_name(item), str(err), records.INPUT)
        # With several processes every one runs the same number of batches (some may be empty).
        n_batches = multihost.global_max(-(-len(good) // options.batch_size))
        for b in range(n_batches):
            chunk = good[b * options.batch_size:(b + 1) * options.batch_size]
            for (i, audio), record in zip(chunk, self._transcribe_batch([a for _, a in chunk], options)):
                results[i] = records.transcript(input_name(inputs[i]), duration_s=audio.shape[0] / SAMPLE_RATE,
                                                windows=1, **record)
        return results  # type: ignore[return-value]

    def _transcribe_batch(self, clips: list[np.ndarray], options: TranscribeOptions) -> list[dict]:
        n = len(clips)
        padded = np.zeros((bucket(max(n, 1)), N_SAMPLES), np.float32)
        for row, clip in enumerate(clips):
            padded[row] = pad_or_trim(clip)
        mel = self.mel(padded)[:n]
        if self.tokenizer.multilingual and options.language is None:
            languages = [code for code, _ in self.detect_languages(mel)]
        else:
            languages = [options.language if self.tokenizer.multilingual else "en"] * n
        # Rows that share a language share a prompt and decode together; every process walks
        # the union of languages so their calls stay in lockstep.
        codes = self.tokenizer.all_language_codes if self.tokenizer.multilingual else ("en",)
        out: list[Optional[dict]] = [None] * n
        for language in (codes[i] for i in multihost.global_union([codes.index(c) for c in languages])):
            rows = [r for r in range(n) if languages[r] == language]
            tokenizer = self.tokenizer.with_language(language, options.decode.task) if self.tokenizer.multilingual \
                else self.tokenizer
            prompt = initial_tokens(tokenizer, options.decode, self.dims.n_text_ctx)
            windows = self.decoder.decode(mel[np.asarray(rows, dtype=np.int32)], tokenizer, prompt, options.decode)
            for r, window in zip(rows, windows):
                duration = clips[r].shape[0] / SAMPLE_RATE
                silent = is_silence(window, options.decode)
                out[r] = {
                    "text": "" if silent else window.text, "language": language,
                    "segments": [] if silent else
                    [s.to_json() for s in split_segments(window.tokens, tokenizer, 0.0, duration)],
                    "avg_logprob": window.avg_logprob, "no_speech_prob": window.no_speech_prob,
                    "compression_ratio": window.compression_ratio, "temperature": window.temperature,
                    "unlikely": needs_fallback(window, options.decode), "tokens": window.tokens}
        return out  # type: ignore[return-value]


def transcribe(inputs: "Inputs", model: str = DEFAULT_MODEL, **options) -> list[records.Transcript]:
    """One-shot convenience: load `model`, transcribe `inputs` (as `named_inputs` takes them) with
    keyword `options` (checked before the model loads), return the records."""
    resolved = resolve_options(None, options, "transcribe()")
    return Transcriber(model).transcribe(named_inputs(inputs), resolved)


# What transcribe / transcribe_iter / decode_clips take: paths, file objects, entries, 16 kHz
# sample arrays, `(name, samples)` pairs, or a mapping name -> samples
Inputs = Union[Iterable[Union[AudioInput, tuple[str, np.ndarray]]], Mapping[str, np.ndarray]]


def named_inputs(inputs: Inputs) -> Iterable[AudioInput]:
    """The inputs as the engine takes them, in order: a mapping name -> samples and
    `(name, samples)` pairs become sample arrays whose records (and errors) are named `name`
    (entry.NamedSamples) instead of `<array>`; every other input is kept as it is. A list (or
    mapping) gives a list; an iterator gives an iterator, taken from as the reading side
    reaches each input (a bulk run's inputs stream in while they are listed)."""
    if isinstance(inputs, Mapping):
        return [_named(name, samples) for name, samples in inputs.items()]
    named = (_named(*item) if isinstance(item, tuple) and len(item) == 2 else item for item in inputs)
    return named if isinstance(inputs, Iterator) else list(named)


def _named(name: str, samples: np.ndarray) -> NamedSamples:
    """One named array input; TypeError for anything but a str name and a numpy array."""
    if not isinstance(samples, np.ndarray):
        raise TypeError(f"a named input is (name, samples) with 16 kHz samples as a numpy array; "
                        f"{name!r} has a {type(samples).__name__}")
    return NamedSamples(name, samples)


def resolve_options(options: Optional[TranscribeOptions], flat: dict[str, Any], where: str) -> TranscribeOptions:
    """The options of a call: `options` as given, or TranscribeOptions from the keyword options
    `flat` (faster-whisper's `transcribe(audio, beam_size=5)`); both at once, an unknown name
    or options that are not a TranscribeOptions raise TypeError naming `where`."""
    if options is None:
        try:
            return TranscribeOptions.from_kwargs(**flat)
        except TypeError as err:
            raise TypeError(f"{where}: {err}") from None
    if flat:
        raise TypeError(f"{where} takes a TranscribeOptions or keyword options, not both "
                        f"(got options and {', '.join(sorted(flat))})")
    if not isinstance(options, TranscribeOptions):
        raise TypeError(f"{where}: options must be a TranscribeOptions (or pass keyword options), "
                        f"got {type(options).__name__}")
    return options


class WatchedWork:
    """The scheduler's WindowWork (windows.WindowPipeline) telling a `progress.Progress` of each
    batch: before the first batch of each size (`compiled`: the sizes its Transcriber decoded
    before), that the decoder compiles for it (a pause of up to a minute that a log would
    otherwise not explain); after each batch, how far every file in it has got (seconds of its
    audio and windows decoded). Without a progress, it only notes the sizes decoded."""

    def __init__(self, work: WindowPipeline, progress: Optional[Progress], compiled: set[int]):
        self.work, self.progress, self.compiled = work, progress, compiled
        self.names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # job -> its input's name

    def prepare(self, files: list) -> list:
        """WindowPipeline.prepare, remembering each job's input name."""
        prepared = self.work.prepare(files)
        for loaded, file in zip(files, prepared):
            if not isinstance(file, BaseException):
                self.names[file.job] = input_name(loaded.item)
        return prepared

    def decode(self, requests: list) -> list:
        """WindowPipeline.decode, with the progress told before and after."""
        rows = bucket(max(len(requests), 1))
        first = rows not in self.compiled and self.progress is not None
        if first:
            self.progress.compiling(rows)
        start = time.monotonic()
        windows = self.work.decode(requests)
        self.compiled.add(rows)
        if self.progress is None:
            return windows
        if first:
            self.progress.compiled(rows, time.monotonic() - start)
        for request in requests:
            job = request.job
            self.progress.window_done(id(job), self.names.get(job, "?"),
                                      (request.frame + request.audio_frames) / FRAMES_PER_SECOND,
                                      job.audio.duration, _finished(job))
        return windows


def _finished(job) -> Callable[[], bool]:
    """Whether a file's job is done (or gone: failed files are dropped), holding no reference
    to it (its audio is freed when the scheduler lets it go)."""
    ref = weakref.ref(job)
    return lambda: (alive := ref()) is None or alive.done


__all__ = ["LANGUAGES", "DecodeOptions", "TranscribeOptions", "Transcriber", "transcribe"]
