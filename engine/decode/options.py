"""How one 30 s window is decoded, one small frozen dataclass per concern (the reference's
`DecodingOptions` and its fallback thresholds, grouped):

- `SearchOptions`: how tokens are chosen (greedy, best-of sampling, beam search);
- `FallbackOptions`: the temperatures tried in turn and the thresholds that reject a result;
- `RuleOptions`: the logit rules' switches (timestamps, suppressed tokens);
- `PromptOptions`: the text a window is conditioned on (previous text, forced prefix, hotwords);
- `DecodeOptions`: the task plus one of each.

Each checks its own fields when built. `DecodeOptions.from_kwargs` takes the flat names of
openai-whisper's `decode(**options)` (`beam_size=5, temperature=0.0, ...`) and routes each to
its concern.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TASKS = ("transcribe", "translate")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How a window's tokens are chosen: greedy at temperature 0 (or beam search when
    `beam_size` is set), the best of `best_of` samples above it."""

    beam_size: Optional[int] = None  # beam search at temperature 0 (None: greedy)
    patience: Optional[float] = None  # beam: collect round(beam_size * patience) hypotheses
    length_penalty: Optional[float] = None  # None: divide by length; else ((5 + len) / 6) ** alpha
    best_of: Optional[int] = 5  # independent samples per window at temperature > 0
    sample_len: int = 224  # max sampled tokens per window
    seed: int = 0  # sampling randomness (attempt k of a window uses seed + k)

    def __post_init__(self) -> None:
        for name in ("beam_size", "best_of"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.patience is not None and self.beam_size is None:
            raise ValueError("patience applies to beam search: set beam_size")
        if self.sample_len < 1:
            raise ValueError(f"sample_len must be >= 1, got {self.sample_len}")


@dataclasses.dataclass(frozen=True)
class FallbackOptions:
    """The temperatures a window is decoded at in turn, and when a result is rejected for the
    next one (the reference's `transcribe` thresholds)."""

    temperature: Union[float, tuple[float, ...]] = FALLBACK_TEMPERATURES  # a tuple: fallback order
    compression_ratio_threshold: Optional[float] = 2.4  # retry when the text is more repetitive
    logprob_threshold: Optional[float] = -1.0  # retry when the average log-probability is lower
    no_speech_threshold: Optional[float] = 0.6  # ... unless this says the window is silence

    def __post_init__(self) -> None:
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be >= 0, got {self.temperature!r}")

    @property
    def temperatures(self) -> tuple[float, ...]:
        t = self.temperature
        return tuple(t) if isinstance(t, (tuple, list)) else (float(t),)


@dataclasses.dataclass(frozen=True)
class RuleOptions:
    """Switches of the logit rules applied at every step."""

    without_timestamps: bool = False  # <|notimestamps|>: text only, no segment times
    suppress_blank: bool = True  # no blank or EOT as the first sampled token
    suppress_tokens: str = "-1"  # comma-separated ids; "-1" = the non-speech set
    repetition_penalty: float = 1.0  # faster-whisper's: > 1 discourages text tokens already sampled (1: off)
    no_repeat_ngram_size: int = 0  # faster-whisper's: no n-gram of this many tokens sampled twice (0: off)

    def __post_init__(self) -> None:
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        try:
            _ = self.listed_suppress_ids
        except ValueError as err:
            raise ValueError(f"suppress_tokens must be comma-separated ids, got {self.suppress_tokens!r}") from err

    @property
    def listed_suppress_ids(self) -> frozenset[int]:
        """The ids `suppress_tokens` names (-1 among them stands for the non-speech set)."""
        return frozenset(int(t) for t in self.suppress_tokens.split(",") if t.strip())


@dataclasses.dataclass(frozen=True)
class PromptOptions:
    """The text a window is conditioned on, as text or token ids. Long-form decoding passes each
    window's own previous text and prefix as arguments (`initial_tokens`); these are the
    defaults of a single window (`whisper.decode`)."""

    prompt: Optional[Union[str, Sequence[int]]] = None  # previous text, after <|startofprev|>
    prefix: Optional[Union[str, Sequence[int]]] = None  # forced start of this window's text
    hotwords: Optional[str] = None  # words to favour: put in the prompt before the previous text (no prefix)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How to decode a window: the task and one of each concern."""

    task: str = "transcribe"  # or "translate" (multilingual models)
    search: SearchOptions = SearchOptions()
    fallback: FallbackOptions = FallbackOptions()
    rules: RuleOptions = RuleOptions()
    prompts: PromptOptions = PromptOptions()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be transcribe or translate, got {self.task!r}")

    @classmethod
    def from_kwargs(cls, **flat: Any) -> "DecodeOptions":
        """From the flat names (`beam_size=5, temperature=0.0, prompt="..."`): each goes to
        the concern that has a field of that name."""
        return cls(**route(flat, own=("task",), concerns=DECODE_CONCERNS, where="DecodeOptions"))


# field of DecodeOptions -> the concern's class
DECODE_CONCERNS = {"search": SearchOptions, "fallback": FallbackOptions, "rules": RuleOptions,
                   "prompts": PromptOptions}


def route(flat: dict[str, Any], *, own: Sequence[str], concerns: dict[str, type],
          where: str) -> dict[str, Any]:
    """Flat keyword arguments -> the keyword arguments of a composed options class: names in
    `own` stay, every other name becomes a field of the concern (a dataclass in `concerns`)
    that declares it. An unknown name raises TypeError listing the known ones."""
    homes = {f.name: field for field, kind in concerns.items() for f in dataclasses.fields(kind)}
    out: dict[str, Any] = {name: flat[name] for name in own if name in flat}
    grouped: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name in own:
            continue
        if name not in homes:
            raise TypeError(f"{where} has no option {name!r}; options: {sorted([*own, *homes])}")
        grouped.setdefault(homes[name], {})[name] = value
    out.update({field: concerns[field](**values) for field, values in grouped.items()})
    return out
