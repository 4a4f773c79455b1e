"""Model dimensions: one frozen dataclass and the presets of every official checkpoint."""

from __future__ import annotations

import dataclasses

# The first vocabulary id past the text tokens of the English-only vocabulary; the
# multilingual vocabulary adds one more special token before the language block.
_N_TEXT_TOKENS_EN = 51765
VOCAB_PAD_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Sizes of one Whisper checkpoint (the reference's `ModelDimensions`)."""

    n_mels: int  # M: mel bins of the input features (80, or 128 for large-v3*)
    n_audio_ctx: int  # S: encoder positions per 30 s window (1500)
    n_audio_state: int  # D of the encoder
    n_audio_head: int  # H of the encoder
    n_audio_layer: int  # encoder blocks
    n_vocab: int  # V: 51864 (English-only), 51865 (multilingual), 51866 (large-v3*)
    n_text_ctx: int  # T: decoder positions (448)
    n_text_state: int  # D of the decoder
    n_text_head: int  # H of the decoder
    n_text_layer: int  # decoder blocks

    def __post_init__(self) -> None:
        for name in ("n_audio_state", "n_text_state"):
            width, heads = getattr(self, name), getattr(self, name.replace("state", "head"))
            if width % heads:
                raise ValueError(f"{name}={width} is not divisible by its {heads} heads")
        if self.n_vocab < _N_TEXT_TOKENS_EN:
            raise ValueError(f"n_vocab={self.n_vocab} is smaller than Whisper's text vocabulary")

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def n_vocab_padded(self) -> int:
        """Rows of the in-memory embedding table: V rounded up to a multiple of 128, so the
        vocabulary splits evenly over any tensor-parallel axis up to 128 devices. The extra rows
        are zeros and their logits are cut off before any rule or sampler sees them."""
        return -(-self.n_vocab // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE

    @property
    def num_languages(self) -> int:
        return self.n_vocab - _N_TEXT_TOKENS_EN - int(self.is_multilingual)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _dims(n_mels, width, heads, enc_layers, dec_layers, n_vocab) -> ModelDims:
    return ModelDims(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads,
                     n_audio_layer=enc_layers, n_vocab=n_vocab, n_text_ctx=448,
                     n_text_state=width, n_text_head=heads, n_text_layer=dec_layers)


_EN, _MULTI, _V3 = 51864, 51865, 51866

DIMS: dict[str, ModelDims] = {
    "tiny.en": _dims(80, 384, 6, 4, 4, _EN),
    "tiny": _dims(80, 384, 6, 4, 4, _MULTI),
    "base.en": _dims(80, 512, 8, 6, 6, _EN),
    "base": _dims(80, 512, 8, 6, 6, _MULTI),
    "small.en": _dims(80, 768, 12, 12, 12, _EN),
    "small": _dims(80, 768, 12, 12, 12, _MULTI),
    "medium.en": _dims(80, 1024, 16, 24, 24, _EN),
    "medium": _dims(80, 1024, 16, 24, 24, _MULTI),
    "large-v1": _dims(80, 1280, 20, 32, 32, _MULTI),
    "large-v2": _dims(80, 1280, 20, 32, 32, _MULTI),
    "large-v3": _dims(128, 1280, 20, 32, 32, _V3),
    "large-v3-turbo": _dims(128, 1280, 20, 32, 4, _V3),
}
DIMS["large"] = DIMS["large-v3"]
DIMS["turbo"] = DIMS["large-v3-turbo"]
