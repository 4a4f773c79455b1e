"""The jitted generator: argmax rollout equivalence, and token parity with the reference."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import whisper
from flax import nnx

from reference import reference_model
from whisper_nnx.engine.audio import load_audio, pad_or_trim
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.decode.generate import DecodeConfig, Generator, RowSpec, host_prng_key, shrunk_width
from whisper_nnx.engine.decode.logit_rules import LogitRules
from whisper_nnx.engine.decode.programs import default_rows
from whisper_nnx.engine.decode.strategies import BeamSearch, Greedy, Sampling, TokenStrategy
from whisper_nnx.engine.features import log_mel_spectrogram
from whisper_nnx.engine.model.config import ModelDims
from whisper_nnx.engine.model.whisper import build_model
from whisper_nnx.engine.transcribe import TranscribeOptions, Transcriber

SMALL = ModelDims(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
                  n_vocab=51864, n_text_ctx=40, n_text_state=64, n_text_head=4, n_text_layer=2)


@pytest.mark.slow  # compiles a model's decode loop (about 100 s on a busy 2-core machine)
def test_greedy_equals_argmax_rollout_of_uncached_forward():
    model = build_model(SMALL, seed=5)
    rng = np.random.default_rng(1)
    mel = jnp.asarray(rng.standard_normal((3, 80, 100)).astype(np.float32))
    prompt = np.array([[50257, 11, 12]] * 3, np.int32)
    prompt[1, 1] = 99
    eot = 50256
    config = DecodeConfig(rules=LogitRules(sample_begin=3, eot=eot, no_timestamps=50362,
                                           timestamp_begin=None), sample_len=12)
    result = Generator(model).generate(mel, jnp.asarray(prompt), config)
    # Reference rollout: the full uncached forward pass re-run for every new token. One jitted
    # program over a fixed buffer (the tokens so far, then EOT filler), read at the last token:
    # the decoder is causal, so the filler after it changes nothing (checked on the prompt
    # alone); eager calls at 12 lengths compiled every op 12 times (about 40 s).
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, mel, tokens: nnx.merge(graphdef, state)(mel, tokens))
    width = prompt.shape[1] + 12

    def last_logits(tokens):
        buffer = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=eot)
        return np.asarray(forward(state, mel, jnp.asarray(buffer)))[:, tokens.shape[1] - 1]

    np.testing.assert_allclose(last_logits(prompt), np.asarray(forward(state, mel, jnp.asarray(prompt)))[:, -1],
                               rtol=1e-5, atol=1e-5)
    tokens = prompt.copy()
    finished = np.zeros(3, bool)
    for _ in range(12):
        logits = last_logits(tokens)
        nxt = np.where(finished, eot, logits.argmax(-1))
        finished |= nxt == eot
        tokens = np.concatenate([tokens, nxt[:, None].astype(np.int32)], axis=1)
        if finished.all():
            break
    got = np.asarray(result.tokens)[:, :tokens.shape[1]]
    np.testing.assert_array_equal(got, tokens)


def test_shrink_width_halves_at_least():
    assert [shrunk_width(a, 16) for a in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert shrunk_width(3, 16, multiple=8) == 8 and shrunk_width(1, 8, multiple=8) == 8
    assert shrunk_width(1, 1) == 1


@pytest.mark.slow  # compiles a model's decode loop
@pytest.mark.parametrize("sample", [False, True])
def test_dropping_finished_rows_changes_no_row(sample):
    """Rows stopped at different limits: stretches of 3 steps with finished rows dropped between
    them give every row the tokens and log-probabilities of the one-program loop."""
    model = build_model(SMALL, seed=7)
    rng = np.random.default_rng(3)
    batch = 8
    mel = jnp.asarray(rng.standard_normal((batch, 80, 100)).astype(np.float32))
    prompt = np.tile(np.array([[50257, 11, 12]], np.int32), (batch, 1))
    config = DecodeConfig(rules=LogitRules(sample_begin=3, eot=50256, no_timestamps=50362,
                                           timestamp_begin=None), sample_len=24)
    strategy = Sampling() if sample else Greedy()
    limits = np.array([2, 24, 4, 5, 3, 7, 1, 4], np.int32)  # one long row among short ones
    seeds = np.arange(batch, dtype=np.int32) * 11
    rows = RowSpec(np.zeros(batch, np.int32), limits, np.zeros(batch, np.int32), seeds)
    whole = Generator(model, shrink_every=0).generate(mel, prompt, config, seed=4, temperature=0.8, rows=rows,
                                                      strategy=strategy)
    stretches = Generator(model, shrink_every=3)
    widths = []
    take = stretches._take
    stretches._take = lambda decode, cross, r, index: (widths.append(len(index)), take(decode, cross, r, index))[1]
    got = stretches.generate(mel, prompt, config, seed=4, temperature=0.8, rows=rows, strategy=strategy)
    assert widths == [2, 1], widths  # after 6 steps 2 rows remain (limits 7, 24), after 9 one
    # rows x steps decoded: 8 rows for two stretches of 3, 2 rows for 3 more, then 1 row to step 24
    assert stretches.counters.row_steps == 8 * 3 + 8 * 3 + 2 * 3 + 1 * 15
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(whole.tokens))
    np.testing.assert_allclose(np.asarray(got.sum_logprobs), np.asarray(whole.sum_logprobs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.no_speech_prob), np.asarray(whole.no_speech_prob), atol=1e-6)
    sampled = (np.asarray(got.tokens)[:, 3:] != 50256).sum(1)
    np.testing.assert_array_equal(sampled, limits)  # random weights never say EOT: each row ran to its limit


@dataclasses.dataclass(frozen=True)
class _TopOne(TokenStrategy):
    """A strategy written outside the engine: top-k sampling with k = 1, i.e. greedy."""

    k: int = 1

    def choose(self, logits, temperature, key, seeds):
        top_logits, top_ids = jax.lax.top_k(logits, self.k)
        keys = jax.vmap(lambda seed: jax.random.fold_in(key, seed))(seeds)
        picked = jax.vmap(jax.random.categorical)(keys, top_logits / temperature)
        return jnp.take_along_axis(top_ids, picked[:, None], axis=1)[:, 0]


def test_a_new_strategy_plugs_in_through_the_seam(tiny_en_model, data_dir):
    """A token strategy defined here runs in the engine's loop (shrinking included) on tiny.en;
    top-1 sampling at any temperature gives greedy's tokens and log-probabilities."""
    model, tokenizer = tiny_en_model
    mel = jnp.asarray(_mels(model, data_dir, ["sample_joe.flac", "sample_espeak.flac", "sample_joe.flac"]))
    prompt = jnp.asarray([list(tokenizer.sot_sequence_including_notimestamps)] * 3, jnp.int32)
    config = _tiny_config(tokenizer, prompt.shape[1])
    generator = Generator(model, shrink_every=4)
    greedy = generator.generate(mel, prompt, config)
    top_one = generator.generate(mel, prompt, config, seed=3, temperature=0.7, strategy=_TopOne())
    np.testing.assert_array_equal(np.asarray(top_one.tokens), np.asarray(greedy.tokens))
    np.testing.assert_allclose(np.asarray(top_one.sum_logprobs), np.asarray(greedy.sum_logprobs), rtol=1e-5)
    assert (np.asarray(greedy.tokens)[:, prompt.shape[1]:] != tokenizer.eot).sum() >= 3  # it did decode text
    assert hash(_TopOne()) == hash(_TopOne()) and _TopOne() != _TopOne(k=2)  # a static jit argument


def test_runner_phases_compose_to_generate(tiny_en_model, data_dir):
    """encode, prefill, one step and the rest of the loop, called one by one through
    `Generator.programs`, give `Generator.generate`'s tokens for a short decode."""
    model, tokenizer = tiny_en_model
    mel = jnp.asarray(_mels(model, data_dir, ["sample_joe.flac", "sample_espeak.flac"]))
    prompt = jnp.asarray([list(tokenizer.sot_sequence_including_notimestamps)] * 2, jnp.int32)
    config = _tiny_config(tokenizer, prompt.shape[1], sample_len=8)
    generator = Generator(model, shrink_every=0)
    expected = generator.generate(mel, prompt, config)
    programs, state, static = generator.programs, generator.state, dict(config=config, strategy=Greedy())
    rows = default_rows(None, 2, config)
    rng, temperature = jax.random.PRNGKey(0), jnp.float32(1.0)
    features = programs.encode(state, mel)
    decode, cross, no_speech = programs.prefill(state, features, prompt, rows, rng, temperature, **static)
    assert int(decode.length) == prompt.shape[1]
    decode = programs.steps(state, decode, cross, rows, temperature, decode.length + 1, **static)
    assert int(decode.length) == prompt.shape[1] + 1
    decode = programs.steps(state, decode, cross, rows, temperature, jnp.int32(prompt.shape[1] + 8), **static)
    np.testing.assert_array_equal(np.asarray(decode.tokens), np.asarray(expected.tokens))
    np.testing.assert_allclose(np.asarray(decode.sum_logprobs), np.asarray(expected.sum_logprobs), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(no_speech), np.asarray(expected.no_speech_prob), atol=1e-6)


def test_beam_phases_compose_to_the_beam_window(tiny_en_model, data_dir):
    """encode, the beam prefill, one beam step and the rest of the loop, called one by one
    through `Generator.programs`, give the whole beam-search program's hypotheses."""
    model, tokenizer = tiny_en_model
    mel = jnp.asarray(_mels(model, data_dir, ["sample_joe.flac", "sample_espeak.flac"]))
    prompt = jnp.asarray([list(tokenizer.sot_sequence_including_notimestamps)] * 2, jnp.int32)
    config = _tiny_config(tokenizer, prompt.shape[1], sample_len=10)
    generator = Generator(model, shrink_every=0)
    programs, state = generator.programs, generator.state
    static = dict(config=config, strategy=BeamSearch(beam_size=3))
    rows = default_rows(None, 2, config)
    rng, temperature = jax.random.PRNGKey(0), jnp.float32(0.0)
    expected = programs.window(state, mel, prompt, rows, rng, temperature, **static)
    beams, cross, stop, no_speech = programs.beam_prefill(state, programs.encode(state, mel), prompt, rows, **static)
    assert int(beams.length) == prompt.shape[1] and int(stop) == prompt.shape[1] + 10
    assert beams.tokens.shape == (2, 3, prompt.shape[1] + 10)
    beams = programs.beam_steps(state, beams, cross, rows, beams.length + 1, **static)
    assert int(beams.length) == prompt.shape[1] + 1
    beams = programs.beam_steps(state, beams, cross, rows, stop, **static)
    np.testing.assert_array_equal(np.asarray(beams.finished_tokens), np.asarray(expected.finished_tokens))
    np.testing.assert_array_equal(np.asarray(beams.finished_count), np.asarray(expected.finished_count))
    np.testing.assert_allclose(np.asarray(beams.finished_scores), np.asarray(expected.finished_scores), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(no_speech), np.asarray(expected.no_speech_prob), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(beams.tokens), np.asarray(expected.beam_tokens))
    np.testing.assert_allclose(np.asarray(beams.sum_logprobs), np.asarray(expected.beam_scores), rtol=1e-5)
    assert (np.asarray(beams.tokens)[:, :, prompt.shape[1]:] != tokenizer.eot).all()  # ten tokens of text each


@pytest.fixture(scope="module")
def tiny_en_model(tiny):
    return nnx.merge(tiny.generator.graphdef, tiny.generator.state), tiny.tokenizer


def _mels(model, data_dir, names: list[str]) -> np.ndarray:
    audio = np.stack([pad_or_trim(load_audio(data_dir / name)) for name in names])
    return np.asarray(log_mel_spectrogram(audio, n_mels=model.dims.n_mels))


def _tiny_config(tokenizer, prompt_len: int, sample_len: int = 12) -> DecodeConfig:
    return DecodeConfig(rules=LogitRules(sample_begin=prompt_len, eot=tokenizer.eot,
                                         no_timestamps=tokenizer.no_timestamps, timestamp_begin=None),
                        sample_len=sample_len, no_speech=tokenizer.no_speech)


def _with_reference(name_or_transcriber):
    """Our Transcriber and the reference model holding the same real weights."""
    ours = Transcriber(name_or_transcriber) if isinstance(name_or_transcriber, str) else name_or_transcriber
    checkpoint = read_checkpoint(ours.checkpoint_path)
    return ours, reference_model(checkpoint.dims, checkpoint.params)


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def both(request, tiny):
    """tiny.en: the session's Transcriber."""
    return _with_reference(tiny if request.param == "tiny.en" else request.param)


@pytest.mark.slow
@pytest.mark.parametrize("without_timestamps", [False, True])
def test_greedy_tokens_match_reference(both, data_dir, without_timestamps):
    ours, ref = both
    files = ["sample_joe.flac", "sample_espeak.flac"]
    records = ours.decode_clips([data_dir / f for f in files],
                              TranscribeOptions.from_kwargs(language="en", temperature=0.0,
                                                               without_timestamps=without_timestamps))
    for name, record in zip(files, records):
        audio = torch.from_numpy(pad_or_trim(load_audio(data_dir / name)))
        mel = whisper.log_mel_spectrogram(audio, n_mels=ours.dims.n_mels)
        options = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=without_timestamps)
        expected = whisper.decode(ref, mel, options)
        assert record["tokens"] == expected.tokens, (name, record["text"], expected.text)
        assert record["text"] == expected.text
        assert abs(record["avg_logprob"] - expected.avg_logprob) < 1e-3
        assert abs(record["no_speech_prob"] - expected.no_speech_prob) < 1e-4


@pytest.mark.slow
def test_language_detection_matches_reference(data_dir):
    ours, ref = _with_reference("base")
    audio = pad_or_trim(load_audio(data_dir / "sample_joe.flac"))
    (code, probs), = ours.detect_languages(ours.mel(audio[None]))
    _, ref_probs = ref.detect_language(whisper.log_mel_spectrogram(torch.from_numpy(audio))[None])
    assert code == "en" == max(ref_probs[0], key=ref_probs[0].get)
    for lang in ("en", "de", "fr", "es"):
        assert abs(probs[lang] - ref_probs[0][lang]) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("prompt,prefix,beam_size", [("Stella, tickets, bring.", None, None),
                                                     (None, "Please call", 3),
                                                     ([50, 60, 70], " The", None)])
def test_prompt_and_prefix_match_reference(both, data_dir, prompt, prefix, beam_size):
    ours, ref = both
    files = ["sample_espeak.flac", "sample_joe.flac"]
    records = ours.decode_clips([data_dir / f for f in files],
                              TranscribeOptions.from_kwargs(language="en", temperature=0.0, prompt=prompt,
                                                            prefix=prefix, beam_size=beam_size))
    for name, record in zip(files, records):
        mel = whisper.log_mel_spectrogram(torch.from_numpy(pad_or_trim(load_audio(data_dir / name))),
                                          n_mels=ours.dims.n_mels)
        expected = whisper.decode(ref, mel, whisper.DecodingOptions(
            language="en", fp16=False, prompt=prompt, prefix=prefix, beam_size=beam_size))
        assert record["tokens"] == expected.tokens, (name, record["text"], expected.text)


@pytest.mark.slow
def test_german_detection_transcription_and_translation_match_reference(data_dir):
    ours, ref = _with_reference("base")
    path = data_dir / "sample_german.flac"
    audio = pad_or_trim(load_audio(path))
    mel = whisper.log_mel_spectrogram(torch.from_numpy(audio))
    (code, probs), = ours.detect_languages(ours.mel(audio[None]))
    _, ref_probs = ref.detect_language(mel[None])
    assert code == "de" == max(ref_probs[0], key=ref_probs[0].get)
    assert abs(probs["de"] - ref_probs[0]["de"]) < 1e-4
    auto, translated = (ours.decode_clips([path], TranscribeOptions.from_kwargs(task=task, temperature=0.0))[0]
                        for task in ("transcribe", "translate"))
    assert auto["language"] == "de"
    for record, task in ((auto, "transcribe"), (translated, "translate")):
        expected = whisper.decode(ref, mel, whisper.DecodingOptions(language="de", task=task, fp16=False))
        assert record["tokens"] == expected.tokens, (task, record["text"], expected.text)
    assert "Guten Morgen" in auto["text"] and "park" in translated["text"].lower()


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**31 - 1, 2**31, 2**32 + 5, -1])
def test_host_prng_key_is_jax_prng_key(seed):
    """The key built on the host (no device program at start-up) is the key JAX builds."""
    np.testing.assert_array_equal(np.asarray(host_prng_key(seed)), np.asarray(jax.random.PRNGKey(seed)))
    assert np.asarray(host_prng_key(seed)).dtype == np.asarray(jax.random.PRNGKey(seed)).dtype

