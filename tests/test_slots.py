"""Continuous batching (engine/decode/slots.py): rows at their own lengths compute what they
compute in a whole batch, and the window decoder over slots gives the whole-batch tokens."""

from __future__ import annotations

import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from whisper_nnx.engine.audio import N_SAMPLES, load_audio
from whisper_nnx.engine.decode.logit_rules import LogitRules, apply_rules
from whisper_nnx.engine.decode.options import DecodeOptions
from whisper_nnx.engine.decode.prompts import initial_tokens
from whisper_nnx.engine.model.config import ModelDims

_DIMS = ModelDims(n_mels=80, n_audio_ctx=50, n_audio_state=64, n_audio_head=4, n_audio_layer=2, n_vocab=51864,
                  n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=2)


@pytest.mark.slow  # compiles the rules at many lengths: about 10 s
def test_rules_with_a_length_per_row_equal_each_row_at_its_own_length():
    """Logit rules given [B] lengths filter each row as the scalar-length rules filter it alone
    (timestamps, blank, suppressed ids, repetition guards)."""
    rng = np.random.default_rng(4)
    vocab, buffer, begin = 120, 12, 3
    rules = LogitRules(sample_begin=begin, eot=100, no_timestamps=101, timestamp_begin=102, blank_ids=(5, 100),
                       suppress_ids=(7, 8), repetition_penalty=1.5, no_repeat_ngram_size=2)
    tokens = rng.integers(0, vocab, (4, buffer)).astype(np.int32)
    tokens[:, 4] = 105  # a timestamp in every row
    tokens[1, 5:7] = [3, 3]  # text repeated: the n-gram ban has something to ban
    logits = rng.standard_normal((4, vocab)).astype(np.float32) * 3
    lengths = np.asarray([3, 5, 7, 9], np.int32)
    per_row = np.asarray(apply_rules(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(lengths), rules))
    for row, length in enumerate(lengths):
        alone = np.asarray(apply_rules(jnp.asarray(logits[row:row + 1]), jnp.asarray(tokens[row:row + 1]),
                                       jnp.int32(length), rules))[0]
        np.testing.assert_array_equal(per_row[row], alone)
    assert np.isneginf(per_row[0, 5]) and np.isneginf(per_row[0, 100])  # blank and EOT at the first sample
    assert not np.isneginf(per_row[3, 5])


@pytest.mark.slow  # compiles a small random decoder
def test_a_step_at_a_length_per_row_equals_each_row_alone():
    """decode_step with [B] offsets: each row's logits and cache equal that row decoded alone
    at its scalar offset (prompts left-padded differently too)."""
    from whisper_nnx.engine.model.whisper import build_model

    model = build_model(_DIMS, seed=2)
    rng = np.random.default_rng(1)
    features = jnp.asarray(rng.standard_normal((3, 50, 64)).astype(np.float32))
    prompt = jnp.asarray(rng.integers(0, 50000, (3, 6)).astype(np.int32))
    pad = jnp.asarray([0, 2, 4], jnp.int32)
    _, cache = model.prefill(features, prompt, 16, pad)
    offsets = jnp.asarray([6, 8, 11], jnp.int32)
    token = jnp.asarray([[11], [22], [33]], jnp.int32)
    logits, stepped = model.decode_step(token, offsets, cache, pad)
    for row in range(3):
        one = jax.tree.map(lambda a: a[row:row + 1], cache)
        alone_logits, alone = model.decode_step(token[row:row + 1], offsets[row], one, pad[row:row + 1])
        np.testing.assert_allclose(np.asarray(logits[row]), np.asarray(alone_logits[0]), rtol=1e-5, atol=1e-5)
        for got, want in zip(stepped.self_k, alone.self_k):
            np.testing.assert_allclose(np.asarray(got[row]), np.asarray(want[0]), rtol=1e-6, atol=1e-6)
        # the new key is at the row's own offset and nowhere else changed
        changed = np.flatnonzero(np.abs(np.asarray(stepped.self_k[0][row]) - np.asarray(cache.self_k[0][row]))
                                 .sum(axis=(0, 2)) > 0)
        assert changed.tolist() == [int(offsets[row])]


def _corpus_mel(tiny, count: int, data_dir):
    files = sorted(glob.glob(str(data_dir / "corpus" / "*.flac")))[:count]
    audio = np.stack([np.pad(load_audio(f), (0, N_SAMPLES))[:N_SAMPLES] for f in files])
    return tiny.mel(audio)


@pytest.mark.slow
def test_window_decoder_over_slots_gives_the_whole_batch_tokens(tiny, data_dir):
    """Greedy with mixed prompt lengths, then a fallback that retries every window at each
    temperature with best-of sampling: over slots, every window gets the whole-batch path's
    tokens, scores, temperature and no-speech probability; the slot loop wastes fewer
    row-steps."""
    tok = tiny.tokenizer
    mel = _corpus_mel(tiny, 6, data_dir)
    prompts = [initial_tokens(tok, DecodeOptions.from_kwargs(prompt=p), 448)
               for p in (None, "The bakery.", None, "A longer prompt about the market and the cat.", None, None)]
    cases = [DecodeOptions.from_kwargs(temperature=0.0),
             # an unreachable log-probability floor: every window falls back through every temperature
             # (two temperatures: a retry at the next with best-of draws is what slots must keep)
             DecodeOptions.from_kwargs(temperature=(0.0, 0.8), best_of=2, logprob_threshold=0.5,
                                       no_speech_threshold=None)]
    decoder, counters = tiny.decoder, tiny.decoder.generator.counters
    for options in cases:
        decoder.continuous = False
        before = (counters.row_steps, counters.useful)
        whole = decoder.decode(mel, tok, prompts, options, seeds=[5, 6, 7, 8, 9, 10])
        whole_work = (counters.row_steps - before[0], counters.useful - before[1])
        decoder.continuous = True
        try:
            before = (counters.row_steps, counters.useful)
            slots = decoder.decode(mel, tok, prompts, options, seeds=[5, 6, 7, 8, 9, 10])
            slot_work = (counters.row_steps - before[0], counters.useful - before[1])
        finally:
            decoder.continuous = False
        for a, b in zip(whole, slots):
            assert a.tokens == b.tokens and a.temperature == b.temperature
            assert abs(a.sum_logprob - b.sum_logprob) < 1e-3
            assert abs(a.no_speech_prob - b.no_speech_prob) < 1e-5
        assert whole_work[1] == slot_work[1]  # the same useful steps
        assert slot_work[0] <= whole_work[0], (slot_work, whole_work)
    assert {w.temperature for w in slots} == {0.8}  # the fallback case ran every temperature


def _side_by_side(decoder, batches: list[tuple], options) -> list[list]:
    """Each (mel, tokenizer, prompts) batch decoded at once from its own thread, over slots."""
    import concurrent.futures

    decoder.continuous = True
    try:
        with concurrent.futures.ThreadPoolExecutor(len(batches)) as pool:
            futures = [pool.submit(decoder.decode, *batch, options) for batch in batches]
            return [f.result(timeout=600) for f in futures]
    finally:
        decoder.continuous = False


@pytest.mark.slow
def test_batches_decoded_side_by_side_share_the_slots_and_keep_their_tokens(tiny, data_dir):
    """Two batches decoding at once from two threads (as the device lane's batches in flight
    do) share one slot set: with the same prompt width, each gets exactly the tokens it gets
    whole, fallback retries at 0.5 with best-of draws included. With different widths the
    narrower prompts are padded to the wider (one set), which changes only float rounding:
    greedy, the same tokens on these clips."""
    tok = tiny.tokenizer
    mel = _corpus_mel(tiny, 8, data_dir)
    short = [list(tok.sot_sequence)] * 4
    # an unreachable log-probability floor: every window is retried at 0.5 (two draws each)
    retried = DecodeOptions.from_kwargs(temperature=(0.0, 0.5), best_of=2, logprob_threshold=0.5,
                                        no_speech_threshold=None)
    batches = [(mel[:4], tok, short), (mel[4:], tok, short)]
    whole = [tiny.decoder.decode(*batch, retried) for batch in batches]
    for got, want in zip(_side_by_side(tiny.decoder, batches, retried), whole):
        assert [w.tokens for w in got] == [w.tokens for w in want]
        assert [w.temperature for w in got] == [w.temperature for w in want] == [0.5] * 4
        np.testing.assert_allclose([w.sum_logprob for w in got], [w.sum_logprob for w in want], atol=1e-3)

    long = [initial_tokens(tok, DecodeOptions.from_kwargs(prompt=p), 448)
            for p in ("The market opens at seven on Main Street, and the bread is gone by nine.", None,
                      "Doctors arrived.", None)]
    greedy = DecodeOptions.from_kwargs(temperature=0.0)
    batches = [(mel[:4], tok, short), (mel[4:], tok, long)]
    whole = [tiny.decoder.decode(*batch, greedy) for batch in batches]
    for got, want in zip(_side_by_side(tiny.decoder, batches, greedy), whole):
        assert [w.tokens for w in got] == [w.tokens for w in want]
        np.testing.assert_allclose([w.sum_logprob for w in got], [w.sum_logprob for w in want], atol=1e-3)


@pytest.mark.slow
def test_a_bulk_run_with_continuous_batching_writes_the_same_records(tiny, data_dir, tmp_path):
    """Transcriber.transcribe over clips and a long file (sequential windows: the lecture's first
    78 s, cut in a pause; measured: 4 windows, 16 segments), batch 4: the records with continuous
    batching (batches side by side over slots) equal the whole-batch ones."""
    from speech import write_flac

    long_file = tmp_path / "lecture 78 s.flac"
    write_flac(long_file, load_audio(data_dir / "longform" / "lecture.ogg")[:78 * 16000])
    files = sorted(glob.glob(str(data_dir / "corpus" / "*.flac")))[:7] + [str(long_file)]
    decoder = tiny.decoder
    whole = tiny.transcribe(files, batch_size=4)
    decoder.continuous = True
    try:
        slots = tiny.transcribe(files, batch_size=4)
    finally:
        decoder.continuous = False
    assert [r["text"] for r in slots] == [r["text"] for r in whole]
    assert [[(s["start"], s["end"]) for s in r["segments"]] for r in slots] == \
        [[(s["start"], s["end"]) for s in r["segments"]] for r in whole]
    assert len(whole[-1]["segments"]) > 10 and whole[-1]["windows"] >= 3  # the long file's windows went through


@pytest.mark.slow  # loads tiny.en (no compilation)
def test_the_cli_flag_turns_continuous_batching_on():
    from whisper_nnx.engine.cli import _producer, build_parser

    def spec(*flags):
        return _producer(build_parser().parse_args(["transcribe", "a.wav", *flags])).model

    assert spec().continuous_batching is False
    on = spec("--continuous-batching")
    assert on.continuous_batching is True
    transcriber, _ = on.load()
    assert transcriber.decoder.continuous is True
