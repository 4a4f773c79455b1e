"""Options per concern: flat names reach their concern, each concern checks its own fields,
and the CLI's defaults are the library's (but for the reference CLI's beam of 5)."""

from __future__ import annotations

import pytest

from whisper_nnx.engine.decode.options import (
    DecodeOptions,
    FallbackOptions,
    PromptOptions,
    RuleOptions,
    SearchOptions,
)
from whisper_nnx.engine.longform import LongFormOptions
from whisper_nnx.engine.options import ReadOptions, TranscribeOptions
from whisper_nnx.engine.vad import CHUNKED_MIN_SILENCE_MS, VadOptions


def test_flat_names_reach_their_concern():
    options = TranscribeOptions.from_kwargs(
        language="de", batch_size=4, task="translate", beam_size=5, patience=2.0, temperature=(0.0, 0.5),
        logprob_threshold=-2.0, without_timestamps=True, prompt="earlier", hotwords="Stella",
        long_form="chunked", chunk_stride_s=3.0, word_timestamps=True, vad=True, vad_threshold=0.4,
        vad_min_silence_ms=500, spool_after_s=100.0, audio_workers=3)
    assert options.language == "de" and options.batch_size == 4
    assert options.decode == DecodeOptions(
        task="translate", search=SearchOptions(beam_size=5, patience=2.0),
        fallback=FallbackOptions(temperature=(0.0, 0.5), logprob_threshold=-2.0),
        rules=RuleOptions(without_timestamps=True), prompts=PromptOptions(prompt="earlier", hotwords="Stella"))
    assert options.long_form == LongFormOptions(mode="chunked", chunk_stride_s=3.0, word_timestamps=True)
    assert options.vad == VadOptions(threshold=0.4, min_silence_duration_ms=500)
    assert options.reading == ReadOptions(audio_workers=3, spool_after_s=100.0)
    assert options.chunked


def test_chunked_vad_cuts_regions_at_shorter_pauses_unless_told():
    """Chunked long-form packs voice regions into 30 s chunks: finer regions (faster-whisper's
    batched pipeline's 160 ms pauses) pack fuller chunks; sequential keeps its 2 s default."""
    chunked = TranscribeOptions.from_kwargs(long_form="chunked", vad=True)
    assert chunked.vad == VadOptions(min_silence_duration_ms=CHUNKED_MIN_SILENCE_MS) and CHUNKED_MIN_SILENCE_MS == 160
    assert TranscribeOptions.from_kwargs(vad=True).vad == VadOptions(min_silence_duration_ms=2000)
    told = TranscribeOptions.from_kwargs(long_form="chunked", vad=True, vad_min_silence_ms=2000)
    assert told.vad.min_silence_duration_ms == 2000
    assert TranscribeOptions.from_kwargs(long_form="chunked", vad_min_silence_ms=100).vad is None


def test_no_names_is_the_default_and_vad_stays_off_without_vad():
    assert TranscribeOptions.from_kwargs() == TranscribeOptions()
    assert DecodeOptions.from_kwargs() == DecodeOptions()
    assert TranscribeOptions.from_kwargs(vad_threshold=0.3).vad is None
    assert TranscribeOptions.from_kwargs(vad=True).vad == VadOptions()


@pytest.mark.parametrize("make", [lambda: TranscribeOptions.from_kwargs(beam_sise=5),
                                  lambda: DecodeOptions.from_kwargs(language="en")])
def test_an_unknown_name_is_refused(make):
    with pytest.raises(TypeError, match="has no option"):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: SearchOptions(beam_size=0), "beam_size"),
    (lambda: SearchOptions(best_of=0), "best_of"),
    (lambda: SearchOptions(patience=2.0), "patience"),
    (lambda: SearchOptions(sample_len=0), "sample_len"),
    (lambda: FallbackOptions(temperature=(0.0, -0.2)), "temperatures"),
    (lambda: RuleOptions(suppress_tokens="-1,x"), "suppress_tokens"),
    (lambda: DecodeOptions(task="summarize"), "task"),
    (lambda: LongFormOptions(mode="parallel"), "mode"),
    (lambda: LongFormOptions(chunk_stride_s=15.0), "stride"),
    (lambda: ReadOptions(audio_workers=0), "audio_workers"),
    (lambda: ReadOptions(spool_after_s=0.0), "spool_after_s"),
    (lambda: TranscribeOptions(batch_size=0), "batch_size"),
    (lambda: TranscribeOptions.from_kwargs(beam_size=0), "beam_size"),
])
def test_each_concern_checks_its_fields(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_cli_defaults_are_the_library_defaults(tmp_path):
    from whisper_nnx.engine.cli import build_parser, transcribe_options

    args = build_parser().parse_args(["transcribe", str(tmp_path / "a.wav"), "--output-dir", str(tmp_path / "out")])
    # as the reference's CLI, ours searches a beam of 5 by default; all else is the library's
    assert transcribe_options(args) == TranscribeOptions.from_kwargs(beam_size=5)
    args = build_parser().parse_args(["transcribe", "a.wav", "--output-dir", "out", "--beam-size", "5",
                                      "--long-form", "chunked", "--vad", "--vad-threshold", "0.3"])
    options = transcribe_options(args)
    assert options.decode.search.beam_size == 5 and options.chunked
    assert options.vad == VadOptions(threshold=0.3, min_silence_duration_ms=CHUNKED_MIN_SILENCE_MS)
