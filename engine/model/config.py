"""Model dimensions: one frozen dataclass, the presets of every official checkpoint, and the
vocabulary sizes that tell the checkpoints' vocabularies apart."""

from __future__ import annotations

import dataclasses
from typing import Optional

# Vocabulary sizes V of the official checkpoints.
N_VOCAB_EN = 51864  # English-only (*.en)
N_VOCAB_MULTILINGUAL = 51865  # multilingual, 99 languages; the smallest multilingual V
N_VOCAB_V3 = 51866  # large-v3*: one more language (yue)
# V less the language tokens (and the multilingual vocabulary's one extra text token): the
# English-only vocabulary's text and special tokens other than the languages.
N_VOCAB_WITHOUT_LANGUAGES = 51765
VOCAB_PAD_MULTIPLE = 128


def is_multilingual_vocab(n_vocab: int) -> bool:
    """Whether a vocabulary of `n_vocab` entries is a multilingual one."""
    return n_vocab >= N_VOCAB_MULTILINGUAL


def count_languages(n_vocab: int, multilingual: Optional[bool] = None) -> int:
    """Language tokens in a vocabulary of `n_vocab` entries (`multilingual`: None reads it off
    `n_vocab`)."""
    if multilingual is None:
        multilingual = is_multilingual_vocab(n_vocab)
    return n_vocab - N_VOCAB_WITHOUT_LANGUAGES - int(multilingual)


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Sizes of one Whisper checkpoint (the reference's `ModelDimensions`)."""

    n_mels: int  # M: mel bins of the input features (80, or 128 for large-v3*)
    n_audio_ctx: int  # S: encoder positions per 30 s window (1500)
    n_audio_state: int  # D of the encoder
    n_audio_head: int  # H of the encoder
    n_audio_layer: int  # encoder blocks
    n_vocab: int  # V: N_VOCAB_EN, N_VOCAB_MULTILINGUAL or N_VOCAB_V3 for official checkpoints
    n_text_ctx: int  # T: decoder positions (448)
    n_text_state: int  # D of the decoder
    n_text_head: int  # H of the decoder
    n_text_layer: int  # decoder blocks

    def __post_init__(self) -> None:
        for name in ("n_audio_state", "n_text_state"):
            width, heads = getattr(self, name), getattr(self, name.replace("state", "head"))
            if width % heads:
                raise ValueError(f"{name}={width} is not divisible by its {heads} heads")
        if self.n_vocab < N_VOCAB_WITHOUT_LANGUAGES:
            raise ValueError(f"n_vocab={self.n_vocab} is smaller than Whisper's text vocabulary")

    @property
    def is_multilingual(self) -> bool:
        return is_multilingual_vocab(self.n_vocab)

    @property
    def n_vocab_padded(self) -> int:
        """Rows of the in-memory embedding table: V rounded up to a multiple of 128, so the
        vocabulary splits evenly over any tensor-parallel axis up to 128 devices. The extra rows
        are zeros and their logits are cut off before any rule or sampler sees them."""
        return -(-self.n_vocab // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def num_languages(self) -> int:
        return count_languages(self.n_vocab)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _dims(n_mels, width, heads, enc_layers, dec_layers, n_vocab) -> ModelDims:
    return ModelDims(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads,
                     n_audio_layer=enc_layers, n_vocab=n_vocab, n_text_ctx=448,
                     n_text_state=width, n_text_head=heads, n_text_layer=dec_layers)


DIMS: dict[str, ModelDims] = {
    "tiny.en": _dims(80, 384, 6, 4, 4, N_VOCAB_EN),
    "tiny": _dims(80, 384, 6, 4, 4, N_VOCAB_MULTILINGUAL),
    "base.en": _dims(80, 512, 8, 6, 6, N_VOCAB_EN),
    "base": _dims(80, 512, 8, 6, 6, N_VOCAB_MULTILINGUAL),
    "small.en": _dims(80, 768, 12, 12, 12, N_VOCAB_EN),
    "small": _dims(80, 768, 12, 12, 12, N_VOCAB_MULTILINGUAL),
    "medium.en": _dims(80, 1024, 16, 24, 24, N_VOCAB_EN),
    "medium": _dims(80, 1024, 16, 24, 24, N_VOCAB_MULTILINGUAL),
    "large-v1": _dims(80, 1280, 20, 32, 32, N_VOCAB_MULTILINGUAL),
    "large-v2": _dims(80, 1280, 20, 32, 32, N_VOCAB_MULTILINGUAL),
    "large-v3": _dims(128, 1280, 20, 32, 32, N_VOCAB_V3),
    "large-v3-turbo": _dims(128, 1280, 20, 32, 4, N_VOCAB_V3),
    # distil-whisper (hub organisation distil-whisper): the teacher's encoder, a shallow decoder
    "distil-small.en": _dims(80, 768, 12, 12, 4, N_VOCAB_EN),
    "distil-medium.en": _dims(80, 1024, 16, 24, 2, N_VOCAB_EN),
    "distil-large-v2": _dims(80, 1280, 20, 32, 2, N_VOCAB_MULTILINGUAL),
    "distil-large-v3": _dims(128, 1280, 20, 32, 2, N_VOCAB_V3),
    "distil-large-v3.5": _dims(128, 1280, 20, 32, 2, N_VOCAB_V3),
}
DIMS["large"] = DIMS["large-v3"]
DIMS["turbo"] = DIMS["large-v3-turbo"]
