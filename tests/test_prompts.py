"""Prompts across windows: hotwords, a first-window prefix, an initial prompt carried or not,
against hand-built token lists and the reference's transcribe."""

from __future__ import annotations

import numpy as np
import pytest
import whisper

from reference import reference_model
from whisper_nnx.engine.audio import load_audio
from whisper_nnx.engine.checkpoints.formats import read_checkpoint
from whisper_nnx.engine.decode.options import DecodeOptions
from whisper_nnx.engine.decode.prompts import initial_tokens
from whisper_nnx.engine.decode.window_decoder import DecodedWindow
from whisper_nnx.engine.longform import LongFormOptions, SequentialFile
from whisper_nnx.engine.spans import Span, stride_chunks
from whisper_nnx.engine.spool import ArrayAudio
from whisper_nnx.engine.transcribe import TranscribeOptions


def test_hotwords_lead_the_prompt_and_previous_text_fills_the_rest(tiny_tokenizer):
    tok = tiny_tokenizer
    hot, previous = tok.encode(" Stella tickets"), tok.encode(" word") * 300
    got = initial_tokens(tok, DecodeOptions.from_kwargs(hotwords="Stella tickets", prompt=previous), 448)
    room = 448 // 2 - 1 - len(hot)
    assert got == [tok.sot_prev, *hot, *previous[-room:], *tok.sot_sequence]
    # A prefix takes precedence over hotwords (faster-whisper's rule).
    got = initial_tokens(tok, DecodeOptions.from_kwargs(hotwords="Stella", prefix="Hello"), 448)
    assert got == [*tok.sot_sequence, *tok.encode(" Hello")]
    assert initial_tokens(tok, DecodeOptions.from_kwargs(hotwords="Stella"), 448) == \
        [tok.sot_prev, *tok.encode(" Stella"), *tok.sot_sequence]


def test_prefix_applies_to_the_first_window_only(tiny_tokenizer):
    tok = tiny_tokenizer
    options = TranscribeOptions.from_kwargs(prefix="Once upon")
    job = SequentialFile(ArrayAudio(np.full(16000 * 45, 0.01, np.float32)), -2.0, tok, options.decode,
                         LongFormOptions(), 448)
    first = job.requests()[0]
    assert first.prompt == [*tok.sot_sequence, *tok.encode(" Once upon")]
    ts = tok.timestamp_begin
    job.accept(first, DecodedWindow([ts, *tok.encode(" a time"), ts + 100, ts + 100], "a time", -1.0, -0.1,
                                    0.0, 1.0, 0.0))
    second = job.requests()[0]
    assert job.seek == 200 and second.frame == 200
    assert second.prompt == [tok.sot_prev, ts, *tok.encode(" a time"), ts + 100, *tok.sot_sequence]


@pytest.mark.slow
@pytest.mark.parametrize("carry", [False, True])
def test_initial_prompt_matches_the_reference(tiny, data_dir, carry):
    """75 s of the long-form recording with an initial prompt, carried into every window or
    only conditioning the first: the same text and segments as whisper.transcribe."""
    checkpoint = read_checkpoint(tiny.checkpoint_path)
    audio = load_audio(data_dir / "longform" / "lecture.ogg")[:75 * 16000]
    prompt = "A travel diary, read aloud slowly."
    ours = tiny.transcribe([audio], TranscribeOptions.from_kwargs(temperature=0.0, initial_prompt=prompt,
                                                      carry_initial_prompt=carry, skip_non_speech_s=None))[0]
    ref = whisper.transcribe(reference_model(checkpoint.dims, checkpoint.params), audio, language="en",
                             temperature=0.0, fp16=False, initial_prompt=prompt, carry_initial_prompt=carry)
    assert ours["windows"] >= 3
    assert ours["text"] == ref["text"].strip()
    assert [(s["start"], s["end"], s["text"]) for s in ours["segments"]] == \
        [(round(s["start"], 2), round(s["end"], 2), s["text"]) for s in ref["segments"] if s["text"]]


def test_initial_prompt_prompts_every_chunk_and_the_docs_say_so(tiny_tokenizer):
    """Chunked mode decodes its chunks in parallel, none with text before it: the initial
    prompt is the only context any chunk has, so it prompts every chunk (sequential mode
    prompts the first window, whose text then carries on). README and --help say which."""
    from pathlib import Path

    from whisper_nnx.engine.cli import build_parser
    from whisper_nnx.engine.longform import ChunkedFile

    tok = tiny_tokenizer
    audio = ArrayAudio(np.full(16000 * 70, 0.01, np.float32))
    chunks = stride_chunks(audio.audio_frames, 5.0)
    options = TranscribeOptions.from_kwargs(long_form="chunked", initial_prompt="Stella's tickets")
    long_form = LongFormOptions(mode="chunked", initial_prompt="Stella's tickets")
    job = ChunkedFile(audio, -2.0, tok, options.decode, long_form,
                      448, chunks=chunks, chunk_log_mel_max=[-2.0] * len(chunks))
    requests = job.requests()
    assert len(requests) == len(chunks) >= 3
    expected = [tok.sot_prev, *tok.encode(" Stella's tickets"), *tok.sot_sequence]
    assert all(r.prompt == expected for r in requests)

    transcribe = build_parser()._subparsers._group_actions[0].choices["transcribe"]
    help_text = next(a.help for a in transcribe._actions if "--initial-prompt" in a.option_strings)
    assert "every chunk" in help_text and "first window" in help_text
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "`--initial-prompt TEXT` prompts the first window of every file in sequential mode and every chunk" \
        in readme


@pytest.mark.parametrize("temperature, keeps_text", [(0.0, True), (0.6, False)])
def test_a_chunks_continuation_is_prompted_with_its_text_so_far(tiny_tokenizer, temperature, keeps_text):
    """Chunks cut at pauses, the first stopping at a timestamp pair 12 s into its 25 s: the window
    that continues it is prompted as the seek loop prompts its next window (the initial prompt,
    then the chunk's text; none after a window decoded above temperature 0.5) and is not forced
    the file's prefix again."""
    from whisper_nnx.engine.longform import ChunkedFile

    tok = tiny_tokenizer
    options = TranscribeOptions.from_kwargs(long_form="chunked", initial_prompt="Stella", prefix="Well")
    audio = ArrayAudio(np.full(16000 * 50, 0.01, np.float32))
    chunks = [Span(0, 2500), Span(2600, 4600)]
    job = ChunkedFile(audio, -2.0, tok, options.decode, options.long_form, 448, chunks=chunks,
                      chunk_log_mel_max=[-2.0, -2.0])
    first, second = job.requests()
    assert first.prompt == [tok.sot_prev, *tok.encode(" Stella"), *tok.sot_sequence, *tok.encode(" Well")]
    ts = tok.timestamp_begin
    said = [ts, *tok.encode(" Well, hello."), ts + 600]
    job.accept(first, DecodedWindow([*said, ts + 600], "Well, hello.", -1.0, -0.2, 0.0, 1.0, temperature))
    (resume,) = job.requests()
    assert (resume.chunk, resume.frame, resume.audio_frames) == (0, 1200, 1300)
    kept = said if keeps_text else []
    assert resume.prompt == [tok.sot_prev, *tok.encode(" Stella"), *kept, *tok.sot_sequence]
    assert second.prompt == [tok.sot_prev, *tok.encode(" Stella"), *tok.sot_sequence]


def test_per_window_prompts_do_not_revalidate_the_run_options(tiny_tokenizer, caplog):
    """Prompts are arguments of each window, not copies of the run's options: the warning about
    chunked mode with vad and without timestamps is given once, when the options are made, not per chunk."""
    import logging

    from whisper_nnx.engine.longform import ChunkedFile

    with caplog.at_level(logging.WARNING):
        options = TranscribeOptions.from_kwargs(long_form="chunked", without_timestamps=True, initial_prompt="Stella",
                                                vad=True)
        audio = ArrayAudio(np.full(16000 * 90, 0.01, np.float32))
        chunks = stride_chunks(audio.audio_frames, 5.0)
        job = ChunkedFile(audio, -2.0, tiny_tokenizer, options.decode, options.long_form, 448, chunks=chunks,
                          chunk_log_mel_max=[-2.0] * len(chunks))
        assert len(job.requests()) == len(chunks) >= 4
    warned = [r for r in caplog.records if "without timestamps" in r.getMessage()]
    assert len(warned) == 1
