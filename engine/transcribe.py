"""Python API: a `Transcriber` holds a loaded model, its tokenizer and compiled programs.

This stage handles audio of up to 30 s per input (one window); longer inputs are reported as
errors in their records until long-form decoding lands. Inputs are decoded on the host, padded
into fixed-size batches (one compiled program per batch size bucket) and decoded on device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from whisper_nnx.sharding import multihost, rules_for

from .audio import CHUNK_LENGTH, N_SAMPLES, SAMPLE_RATE, AudioDecodeError, load_audio, pad_or_trim
from .decoding import DecodeOptions, WindowDecoder, bucket, initial_tokens, is_silence, lockstep_rows, pad_rows
from .features import log_mel_spectrogram_jit
from .generate import Generator
from .model_hub import DEFAULT_MODEL, resolve_model
from .segments import split_segments
from .tokenizer import LANGUAGES, Tokenizer
from .weights import load_model, read_checkpoint

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TranscribeOptions(DecodeOptions):
    """DecodeOptions plus what applies to whole inputs."""

    language: Optional[str] = None  # None: detect per input (multilingual models)
    batch_size: int = 8  # windows decoded together

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


AudioInput = Union[str, Path, np.ndarray]


class Transcriber:
    """Load once, transcribe many: `Transcriber("tiny.en").transcribe(["a.wav", "b.flac"])`."""

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "float32", mesh: Optional[Mesh] = None,
                 rules=None, allow_replicated: bool = False):
        """`mesh` (see whisper_nnx.sharding.make_mesh) with logical-axis `rules` (a preset of
        whisper_nnx.sharding.PRESETS) shards weights, caches and batches; None: one device."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.checkpoint_path = resolve_model(model)
        checkpoint = read_checkpoint(self.checkpoint_path)
        self.dims = checkpoint.dims
        self.model_name = model
        self.tokenizer = Tokenizer.from_file(checkpoint.directory / "tokenizer.json",
                                             n_vocab=self.dims.n_vocab)
        if mesh is not None and rules is None:
            rules = rules_for("dp+tp")
        self.mesh = mesh
        model_ = load_model(checkpoint, dtype=_DTYPES[dtype], mesh=mesh, rules=rules,
                            allow_replicated=allow_replicated)
        self.generator = Generator(model_, mesh=mesh, rules=rules)
        self.decoder = WindowDecoder(self.generator, self.dims)

    # --- pieces ---------------------------------------------------------------------------

    def mel(self, audio: np.ndarray) -> jax.Array:
        """A batch of up-to-30 s clips [B, N] -> log-mel [B, M, 3000]."""
        return log_mel_spectrogram_jit(jnp.asarray(audio), n_mels=self.dims.n_mels)

    def detect_languages(self, mel: jax.Array) -> list[tuple[str, dict[str, float]]]:
        """Per row of mel [B, M, N]: (best language code, probabilities of every language)."""
        tok = self.tokenizer
        n = mel.shape[0]
        padded = pad_rows(mel, lockstep_rows(n, self.generator.batch_multiple))
        probs = self.generator.fetch(self.generator.language_probs(padded, tok.sot, tuple(tok.all_language_tokens)),
                                     padded.shape[0])[:n]
        codes = tok.all_language_codes
        return [(codes[int(row.argmax())], {c: float(p) for c, p in zip(codes, row)}) for row in probs]

    # --- entry point ----------------------------------------------------------------------

    def transcribe(self, inputs: Sequence[AudioInput], options: TranscribeOptions = TranscribeOptions()
                   ) -> list[dict]:
        """One result record per input, in order (see DESIGN.md's results.jsonl contract)."""
        results: list[Optional[dict]] = [None] * len(inputs)
        good: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(inputs):
            try:
                audio = load_audio(item) if not isinstance(item, np.ndarray) else np.asarray(item, np.float32)
                if audio.shape[0] > N_SAMPLES:
                    raise AudioDecodeError(_name(item), f"{audio.shape[0] / SAMPLE_RATE:.1f} s is longer "
                                           f"than one {CHUNK_LENGTH} s window; long-form decoding is "
                                           "not available yet")
                good.append((i, audio))
            except AudioDecodeError as err:
                results[i] = _record(item, error=str(err))
        # With several processes every one runs the same number of batches (some may be empty).
        n_batches = multihost.global_max(-(-len(good) // options.batch_size))
        for b in range(n_batches):
            chunk = good[b * options.batch_size:(b + 1) * options.batch_size]
            for (i, audio), record in zip(chunk, self._transcribe_batch([a for _, a in chunk], options)):
                results[i] = {**_record(inputs[i], duration_s=audio.shape[0] / SAMPLE_RATE), **record}
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
        records: list[Optional[dict]] = [None] * n
        for language in (codes[i] for i in multihost.global_union([codes.index(c) for c in languages])):
            rows = [r for r in range(n) if languages[r] == language]
            tokenizer = self.tokenizer.with_language(language, options.task) if self.tokenizer.multilingual \
                else self.tokenizer
            prompt = initial_tokens(tokenizer, options, self.dims.n_text_ctx)
            windows = self.decoder.decode(mel[np.asarray(rows, dtype=np.int32)], tokenizer, prompt, options)
            for r, window in zip(rows, windows):
                duration = clips[r].shape[0] / SAMPLE_RATE
                silent = is_silence(window, options)
                records[r] = {
                    "text": "" if silent else window.text, "language": language,
                    "segments": [] if silent else
                    [s.to_json() for s in split_segments(window.tokens, tokenizer, 0.0, duration)],
                    "avg_logprob": window.avg_logprob, "no_speech_prob": window.no_speech_prob,
                    "compression_ratio": window.compression_ratio, "temperature": window.temperature,
                    "tokens": window.tokens}
        return records  # type: ignore[return-value]


def _name(item: AudioInput) -> str:
    return "<array>" if isinstance(item, np.ndarray) else str(item)


def _record(item: AudioInput, *, duration_s: Optional[float] = None, error: Optional[str] = None) -> dict:
    return {"path": _name(item), "text": "", "language": None, "duration_s": duration_s,
            "segments": [], "error": error}


def transcribe(inputs: Iterable[AudioInput], model: str = DEFAULT_MODEL, **options) -> list[dict]:
    """One-shot convenience: load `model`, transcribe `inputs`, return the records."""
    return Transcriber(model).transcribe(list(inputs), TranscribeOptions(**options))


__all__ = ["LANGUAGES", "TranscribeOptions", "Transcriber", "transcribe"]
