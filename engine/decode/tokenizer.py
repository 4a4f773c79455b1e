"""Whisper's tokenizer over a checkpoint's `tokenizer.json`, with the reference's token ids.

Whisper's vocabulary is GPT-2 byte-level BPE (50257 entries for English-only models, 50258
for multilingual ones, `<|endoftext|>` last), followed by special tokens in a fixed order:

    <|startoftranscript|>, one <|xx|> per language, <|translate|>, <|transcribe|>,
    <|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|>, <|0.00|> ... <|30.00|>

so every special id follows from the `<|endoftext|>` id and the number of languages; ids
are derived that way and cross-checked against whatever the `tokenizer.json` declares (older
Hugging Face files name `<|nospeech|>` `<|nocaptions|>` and omit the 1501 timestamp tokens).
Text goes through the Hugging Face `tokenizers` library; timestamps are rendered here, and
BPE merges missing from the file are restored at load time (`_missing_merges`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
from pathlib import Path

import tokenizers

from ..audio import CHUNK_LENGTH, TIME_PRECISION, TOKENS_PER_SECOND
from ..model.config import count_languages, is_multilingual_vocab
from .languages import LANGUAGES, NO_SPACE_LANGUAGES, language_code

N_TIMESTAMPS = CHUNK_LENGTH * TOKENS_PER_SECOND + 1  # 1501: <|0.00|> ... <|30.00|>, TIME_PRECISION apart
TASKS = ("transcribe", "translate")
_ENGLISH_EOT = 50256  # GPT-2's <|endoftext|>; the multilingual vocabulary has one more token
_SPECIAL_TEXT = re.compile(r"<\|[^|<>]*\|>")
_REPLACEMENT = "\ufffd"  # what decoding writes for bytes that are not (yet) a whole character


class Tokenizer:
    """Text <-> token ids for one Whisper checkpoint, plus its special-token ids.

    For English-only vocabularies `language` and `task` are ignored (as in the reference) and
    the start sequence is just `<|startoftranscript|>`; multilingual ones default to
    English transcription.
    """

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        multilingual: bool,
        num_languages: int,
        language: str | None = None,
        task: str | None = "transcribe",
    ):
        if not 0 < num_languages <= len(LANGUAGES):
            raise ValueError(f"num_languages must be in 1..{len(LANGUAGES)}, got {num_languages}")
        self.hf = hf
        self.multilingual = multilingual
        self.num_languages = num_languages
        if multilingual:
            self.language: str | None = language_code(language or "en")
            self.task: str | None = task or "transcribe"
            if self.task not in TASKS:
                raise ValueError(f"task must be one of {TASKS}, got {task!r}")
            if self.language not in self.all_language_codes:
                raise ValueError(f"language {self.language!r} is not in this vocabulary")
        else:
            self.language, self.task = None, None
        self._set_special_ids()

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        multilingual: bool | None = None,
        language: str | None = None,
        task: str | None = "transcribe",
        *,
        n_vocab: int | None = None,
    ) -> Tokenizer:
        """Load `tokenizer.json`. Pass the model's `n_vocab` when known: it fixes whether the
        model is multilingual (`config.is_multilingual_vocab`) and its number of languages;
        without it both are read off the file."""
        hf = _load_hf(Path(path))
        eot = _required_id(hf, "<|endoftext|>", path)
        if multilingual is None:
            multilingual = is_multilingual_vocab(n_vocab) if n_vocab else eot != _ENGLISH_EOT
        if n_vocab:
            num_languages = count_languages(n_vocab, multilingual)
        elif (translate := hf.token_to_id("<|translate|>")) is not None:
            num_languages = translate - (eot + 2)  # the language tokens sit between the two
        else:
            vocab = hf.get_vocab(with_added_tokens=True)
            num_languages = sum(f"<|{code}|>" in vocab for code in LANGUAGES)
        return cls(
            hf, multilingual=multilingual, num_languages=num_languages, language=language, task=task
        )

    @classmethod
    def from_dir(
        cls,
        checkpoint_dir: str | os.PathLike,
        language: str | None = None,
        task: str | None = "transcribe",
    ) -> Tokenizer:
        """Load a checkpoint folder's `tokenizer.json`, taking n_vocab from `config.json`'s
        `vocab_size` (Hugging Face layout) or from `vocabulary.txt` (CTranslate2 layout)."""
        folder = Path(checkpoint_dir)
        return cls.from_file(
            folder / "tokenizer.json", language=language, task=task, n_vocab=_n_vocab(folder)
        )

    def with_language(self, language: str | None, task: str | None = None) -> Tokenizer:
        """The same vocabulary with another language (e.g. a detected one) and/or task."""
        return Tokenizer(
            self.hf,
            multilingual=self.multilingual,
            num_languages=self.num_languages,
            language=language,
            task=task or self.task,
        )

    def _set_special_ids(self) -> None:
        """Derive every special id from <|endoftext|>, checking the file where it names one."""
        self.eot = _required_id(self.hf, "<|endoftext|>", "tokenizer")
        self.sot = self.eot + 1
        after_languages = self.sot + 1 + self.num_languages
        self.translate = after_languages
        self.transcribe = after_languages + 1
        self.sot_lm = after_languages + 2
        self.sot_prev = after_languages + 3
        self.no_speech = after_languages + 4
        self.no_timestamps = after_languages + 5
        self.timestamp_begin = after_languages + 6
        self.n_vocab = self.timestamp_begin + N_TIMESTAMPS
        expected = {
            "<|endoftext|>": self.eot,
            "<|startoftranscript|>": self.sot,
            "<|translate|>": self.translate,
            "<|transcribe|>": self.transcribe,
            "<|startoflm|>": self.sot_lm,
            "<|startofprev|>": self.sot_prev,
            "<|nospeech|>": self.no_speech,
            "<|nocaptions|>": self.no_speech,  # the older name of <|nospeech|>
            "<|notimestamps|>": self.no_timestamps,
            "<|0.00|>": self.timestamp_begin,
        }
        for i, code in enumerate(self.all_language_codes):
            expected[f"<|{code}|>"] = self.sot + 1 + i
        if "he" in self.all_language_codes:  # older files spell Hebrew by its old code
            expected["<|iw|>"] = expected["<|he|>"]
        for text, want in expected.items():
            got = self.hf.token_to_id(text)
            if got is not None and got != want:
                raise ValueError(
                    f"tokenizer.json has {text} at id {got}, expected {want} for a "
                    f"{'multilingual' if self.multilingual else 'English-only'} vocabulary "
                    f"with {self.num_languages} languages"
                )
        self._special_texts = frozenset(expected)

    # --- special sequences --------------------------------------------------------------

    @property
    def all_language_codes(self) -> tuple[str, ...]:
        """Language codes of this vocabulary, in token order."""
        return tuple(LANGUAGES)[: self.num_languages]

    @property
    def all_language_tokens(self) -> tuple[int, ...]:
        """Language token ids, in the order of `all_language_codes`."""
        return tuple(range(self.sot + 1, self.sot + 1 + self.num_languages))

    def to_language_token(self, language: str) -> int:
        """The `<|xx|>` id of a language code, name or alias."""
        code = language_code(language)
        if code not in self.all_language_codes:
            raise KeyError(f"language {code!r} is not in this vocabulary")
        return self.sot + 1 + self.all_language_codes.index(code)

    @property
    def language_token(self) -> int:
        if self.language is None:
            raise ValueError("this tokenizer has no language (English-only vocabulary)")
        return self.to_language_token(self.language)

    @property
    def sot_sequence(self) -> tuple[int, ...]:
        """[sot, language, task] for multilingual vocabularies, [sot] for English-only ones."""
        if not self.multilingual:
            return (self.sot,)
        task = self.transcribe if self.task == "transcribe" else self.translate
        return (self.sot, self.language_token, task)

    @property
    def sot_sequence_including_notimestamps(self) -> tuple[int, ...]:
        return (*self.sot_sequence, self.no_timestamps)

    # --- text ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of plain text. Special-token text such as "<|en|>" is refused (as tiktoken
        does in the reference) rather than silently turned into control tokens."""
        for match in _SPECIAL_TEXT.finditer(text):
            if match.group() in self._special_texts or _is_timestamp_text(match.group()):
                raise ValueError(f"text contains the special token {match.group()!r}")
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, dropping timestamp tokens (other special tokens are kept as text)."""
        return self._decode_text([i for i in ids if i < self.timestamp_begin])

    def decode_with_timestamps(self, ids: list[int]) -> str:
        """Text of `ids` with timestamp tokens rendered like "<|1.08|>"."""
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i < self.timestamp_begin:
                run.append(i)
                continue
            parts.append(self._decode_text(run))
            run = []
            parts.append(f"<|{(i - self.timestamp_begin) * TIME_PRECISION:.2f}|>")
        parts.append(self._decode_text(run))
        return "".join(parts)

    def _decode_text(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False) if ids else ""

    # --- words --------------------------------------------------------------------------

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """`tokens` [T] -> (words, their tokens): the words of word-level timestamps.

        Words start at a token whose text begins with a space or is punctuation (and at every
        special token); in NO_SPACE_LANGUAGES every whole character is a word. The reference's
        rules, including that punctuation means "a substring of string.punctuation"."""
        if self.language in NO_SPACE_LANGUAGES:
            return self.split_tokens_on_unicode(tokens)
        return self.split_tokens_on_spaces(tokens)

    def split_tokens_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group `tokens` into the shortest runs that decode to whole characters.

        A run whose text holds U+FFFD is cut short of a character, unless the whole text has
        a U+FFFD at that place too (invalid bytes that no later token completes)."""
        full = self.decode_with_timestamps(tokens)
        pieces: list[str] = []
        groups: list[list[int]] = []
        run: list[int] = []
        offset = 0  # characters of `full` already given out
        for token in tokens:
            run.append(token)
            text = self.decode_with_timestamps(run)
            bad = text.find(_REPLACEMENT)
            if bad < 0 or full[offset + bad] == _REPLACEMENT:
                pieces.append(text)
                groups.append(run)
                offset += len(text)
                run = []
        return pieces, groups

    def split_tokens_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Join the whole-character pieces of `tokens` into space-delimited words."""
        words: list[str] = []
        groups: list[list[int]] = []
        for piece, piece_tokens in zip(*self.split_tokens_on_unicode(tokens), strict=True):
            starts_word = (
                piece_tokens[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation
            )
            if starts_word or not words:
                words.append(piece)
                groups.append(piece_tokens)
            else:
                words[-1] += piece
                groups[-1].extend(piece_tokens)
        return words, groups

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Ids to suppress so the model does not write speaker tags, music notes or stage
        directions ("(MUSIC)", "[DAVID]", "♪♪") while keeping ordinary punctuation; the
        reference's set, computed from this vocabulary."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # U+2640..U+267F share their first two UTF-8 bytes, so suppressing the first token of a
        # multi-token encoding suppresses only such symbols.
        miscellaneous = set("♩♪♫♬♭♮♯")
        # Hyphens and apostrophes are fine inside words, not at the start of one.
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for ids in (self.encode(symbol), self.encode(" " + symbol)):
                if len(ids) == 1 or symbol in miscellaneous:
                    result.add(ids[0])
        return tuple(sorted(result))


def _load_hf(path: Path) -> tokenizers.Tokenizer:
    """Parse tokenizer.json, restoring BPE merges the file lost (see `_missing_merges`)."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") == "BPE" and model.get("merges"):
        as_pairs = not isinstance(model["merges"][0], str)
        merges = [tuple(m) if as_pairs else tuple(m.split(" ", 1)) for m in model["merges"]]
        missing = _missing_merges(model["vocab"], merges)
        if missing:
            # BPE applies merges in list order, tiktoken by rank (the id of the merged token);
            # the files list merges by that id, so sorting by it restores the reference order.
            merges = sorted(merges + missing, key=lambda m: model["vocab"][m[0] + m[1]])
            model["merges"] = [list(m) if as_pairs else " ".join(m) for m in merges]
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def _missing_merges(vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Merges for vocabulary entries no listed merge produces.

    The Hugging Face tokenizer.json of OpenAI's multilingual checkpoints lacks the
    vocabulary's first merge ("Ġ" + "t" -> "Ġt", rank 256), so words starting with " t"
    encode differently from the reference. Each such entry gets the split tiktoken would
    reach: byte-pair merging with only lower-ranked tokens, which ends in two parts.
    """
    produced = {a + b for a, b in merges}
    found = []
    for token, rank in vocab.items():
        if len(token) < 2 or token in produced or token.startswith("<|"):
            continue
        parts = list(token)
        while len(parts) > 2:
            ranks = [vocab.get(a + b, rank) for a, b in zip(parts, parts[1:], strict=False)]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2 and parts[0] in vocab and parts[1] in vocab:
            found.append((parts[0], parts[1]))
    return found


def _required_id(hf: tokenizers.Tokenizer, text: str, where: object) -> int:
    token_id = hf.token_to_id(text)
    if token_id is None:
        raise ValueError(f"{where}: no {text} token; not a Whisper tokenizer")
    return token_id


def _is_timestamp_text(text: str) -> bool:
    try:
        value = float(text[2:-2])
    except ValueError:
        return False
    return 0.0 <= value <= (N_TIMESTAMPS - 1) * TIME_PRECISION + 1e-9


def _n_vocab(folder: Path) -> int | None:
    """The model's vocabulary size from the files beside tokenizer.json, if they say."""
    config = folder / "config.json"
    if config.exists():
        vocab_size = json.loads(config.read_text()).get("vocab_size")
        if vocab_size:
            return int(vocab_size)
    vocabulary = folder / "vocabulary.txt"
    if vocabulary.exists():
        with vocabulary.open(encoding="utf-8") as f:
            return sum(1 for _ in f)
    return None
