"""Python API: a `Transcriber` holds a loaded model, its tokenizer and compiled programs.

`transcribe` / `transcribe_iter` take files of any length: audio is decoded on background
threads, every file is cut into 30 s windows (sequential seek loop or chunked with stride,
`longform.py`) and windows of many files share device batches (`scheduler.py`). Every input
ends as one record, an `error` record when it cannot be used. `decode_clips` is the plain
single-window decode of clips of up to 30 s (the reference's `whisper.decode`).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from whisper_nnx.sharding import multihost, rules_for

from . import records
from .audio import (
    CHUNK_LENGTH,
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
from .decode.window_decoder import WindowDecoder, bucket, is_silence
from .features import WindowFeatures, log_mel_spectrogram_jit
from .options import TranscribeOptions
from .reading import AudioPrefetcher, speech_finder
from .scheduler import WindowScheduler, expected_windows
from .segments import split_segments
from .windows import WindowPipeline, detect_languages

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPES = ("auto", *_DTYPES)  # what `Transcriber(dtype=...)` and --dtype take


def resolve_dtype(dtype: str, device: Optional[jax.Device] = None) -> str:
    """The compute dtype `dtype` names on `device` (default: JAX's first): "auto" is bfloat16 on
    TPUs and on GPUs with bfloat16 units (NVIDIA compute capability 8.0 and newer: A100, H100,
    L4, ...), float16 on older GPUs (T4, V100), float32 on CPUs (where XLA's bfloat16 measured
    slower: RESULTS.md's CPU sections); any other name is itself."""
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
    return "float32"


class Transcriber:
    """Load once, transcribe many: `Transcriber("tiny.en").transcribe(["a.wav", "b.flac"])`."""

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "auto", mesh: Optional[Mesh] = None,
                 rules=None, allow_replicated: bool = False, quantize: Optional[str] = None):
        """`mesh` (see whisper_nnx.sharding.make_mesh) with logical-axis `rules` (a preset of
        whisper_nnx.sharding.PRESETS) shards weights, caches and batches; None: one device.
        `quantize="int8"` stores the matmul weights as int8 (see quantize.py: about 4x less
        weight memory at rest; not faster on CPU, where XLA dequantizes before the matmuls)."""
        dtype = resolve_dtype(dtype, mesh.devices.flat[0] if mesh is not None else None)
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

    # --- pieces ---------------------------------------------------------------------------

    def mel(self, audio: np.ndarray) -> jax.Array:
        """A batch of up-to-30 s clips [B, N] -> log-mel [B, M, 3000]."""
        return log_mel_spectrogram_jit(jnp.asarray(audio), n_mels=self.dims.n_mels)

    def detect_languages(self, mel: jax.Array) -> list[tuple[str, dict[str, float]]]:
        """Per row of mel [B, M, N]: (best language code, probabilities of every language)."""
        return detect_languages(self.generator, self.tokenizer, mel)

    # --- long-form transcription of files of any length -------------------------------------

    def transcribe(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                   ) -> list[records.Transcript]:
        """One record per input, in input order: a `records.Transcript`, read like the record
        results.jsonl holds (`record["text"]`), plus its `tokens`."""
        results: list[Optional[records.Transcript]] = [None] * len(inputs)
        for index, record in self.transcribe_iter(inputs, options):
            results[index] = record
        return results  # type: ignore[return-value]

    def warn_ignored_options(self, options: TranscribeOptions) -> None:
        """As the reference's CLI: an English-only model ignores a language other than English
        and the translate task, with a warning rather than silently."""
        if self.tokenizer.multilingual:
            return
        if options.language is not None and options.language.lower() not in ("en", "english"):
            logging.warning("%s is an English-only model but was given language %r; using English instead",
                            self.model_name, options.language)
        if options.decode.task == "translate":
            logging.warning("%s: an English-only model cannot translate; transcribing in English instead",
                            self.model_name)

    def transcribe_iter(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                        ) -> Iterator[tuple[int, records.Transcript]]:
        """(input index, record) for every input, in the order files finish; audio is decoded
        on `options.audio_workers` threads while the device works."""
        self.warn_ignored_options(options)
        options = options.as_decoded()
        find_speech = speech_finder(options.vad, options.long_form.skip_non_speech_s is not None, options.chunked)
        reading = options.reading
        files = AudioPrefetcher(inputs, workers=reading.audio_workers, max_ahead=max(8, 2 * options.batch_size),
                                max_seconds=reading.max_audio_in_memory_s / 2, spool_after_s=reading.spool_after_s,
                                spool_dir=reading.spool_dir, find_speech=find_speech)
        work = WindowPipeline(self.generator, self.decoder, self.tokenizer, self.alignment_heads, options,
                              features=self.features)
        scheduler = WindowScheduler(
            work, batch_size=options.batch_size,
            windows_per_file=expected_windows(options.long_form.mode, options.long_form.chunk_stride_s),
            max_admitted_s=reading.max_audio_in_memory_s / 2, in_flight=self.batches_in_flight)
        for index, record in scheduler.run(files):
            yield index, record

    # --- single windows (clips of up to 30 s, as whisper.decode) ---------------------------

    def decode_clips(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                     ) -> list[records.Transcript]:
        """One record per input clip of up to 30 s, each decoded as one window of its audio
        zero-padded to 30 s (the reference's `whisper.decode`); longer clips get an error."""
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
                    "tokens": window.tokens}
        return out  # type: ignore[return-value]


def transcribe(inputs: Iterable[AudioInput], model: str = DEFAULT_MODEL, **options) -> list[records.Transcript]:
    """One-shot convenience: load `model`, transcribe `inputs`, return the records."""
    return Transcriber(model).transcribe(list(inputs), TranscribeOptions.from_kwargs(**options))


__all__ = ["LANGUAGES", "DecodeOptions", "TranscribeOptions", "Transcriber", "transcribe"]
