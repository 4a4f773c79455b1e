"""Conventions users bring from openai-whisper and faster-whisper (issue 27): --suppress-tokens,
keyword options and named arrays in the Python API, progress inside long files (windows, audio
seconds, the compile pause), plain warning lines, and the reference's segment fields (`id`,
`seek`, `tokens`) in the per-file json."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whisper_nnx.engine import cli, records
from whisper_nnx.engine.audio import SAMPLE_RATE, input_name, load_audio
from whisper_nnx.engine.options import TranscribeOptions
from whisper_nnx.engine.progress import Progress
from whisper_nnx.engine.sink import ResultSink
from whisper_nnx.engine.transcribe import named_inputs, resolve_options
from whisper_nnx.engine.writers import write_outputs

DATA = Path(__file__).parent / "data"
LECTURE_HEAD_S = 65  # the first 65 s of the 3.5-minute recording: three windows


# --- --suppress-tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("flags,expected", [
    ([], {-1}),  # the default: the non-speech set, as openai-whisper
    (["--suppress-tokens", "-1"], {-1}),
    (["--suppress_tokens=-1,220,50256"], {-1, 220, 50256}),  # openai-whisper's spelling
    (["--suppress-tokens", "11,13"], {11, 13}),
    (["--suppress-tokens", ""], set()),
])
def test_suppress_tokens_flag_reaches_the_decode_options(flags, expected):
    args = cli.build_parser().parse_args(["transcribe", "a.wav", *flags])
    assert cli.transcribe_options(args).decode.rules.listed_suppress_ids == expected


def test_suppress_tokens_that_are_not_ids_are_a_usage_error(capsys):
    assert cli.main(["transcribe", "a.wav", "--suppress-tokens", "11,comma", "--no-progress"]) == cli.EXIT_USAGE
    expected = "whisper-nnx: error: suppress_tokens must be comma-separated ids, got '11,comma'\n"
    assert capsys.readouterr().err == expected


# --- keyword options and named arrays (no model) ----------------------------------------------------


def test_keyword_options_are_from_kwargs_and_an_options_object_is_kept():
    assert resolve_options(None, {"beam_size": 5, "language": "de"}, "f()") == \
        TranscribeOptions.from_kwargs(beam_size=5, language="de")
    assert resolve_options(None, {}, "f()") == TranscribeOptions()
    given = TranscribeOptions.from_kwargs(batch_size=3)
    assert resolve_options(given, {}, "f()") is given


@pytest.mark.parametrize("options,flat,message", [
    (None, {"beam_sise": 5}, r"^Transcriber.transcribe\(\): TranscribeOptions has no option 'beam_sise'"),
    (TranscribeOptions(), {"beam_size": 5}, r"not both \(got options and beam_size\)$"),
    ({"beam_size": 5}, {}, r"options must be a TranscribeOptions .* got dict$"),
])
def test_bad_options_raise_a_type_error_naming_the_call(options, flat, message):
    with pytest.raises(TypeError, match=message):
        resolve_options(options, flat, "Transcriber.transcribe()")


def test_named_arrays_carry_their_names_and_other_inputs_stay_as_they_are():
    samples = np.linspace(-0.5, 0.5, 800, dtype=np.float32)
    from_mapping = named_inputs({"call-17": samples, "call-18": samples[:400]})
    assert [input_name(x) for x in from_mapping] == ["call-17", "call-18"]
    assert np.array_equal(from_mapping[1], samples[:400]) and from_mapping[0].dtype == np.float32
    mixed = named_inputs([("call-19", samples), "talk.wav", samples])
    assert [input_name(x) for x in mixed] == ["call-19", "talk.wav", "<array>"]
    assert mixed[1] == "talk.wav" and mixed[2] is samples
    assert input_name(mixed[0][100:]) == "call-19"  # a slice keeps the name
    assert input_name(np.asarray(mixed[0], np.float32)) == "<array>"  # a plain copy does not
    with pytest.raises(TypeError, match="'call-20' has a list"):
        named_inputs([("call-20", [0.0, 0.1])])
    with pytest.raises(TypeError, match="name must be a str, got int"):
        named_inputs({20: samples})


# --- progress inside long files ----------------------------------------------------------------


def _finished_flag():
    state = {"done": False}
    return state, (lambda: state["done"])


def test_progress_lines_count_windows_and_show_long_files_under_way():
    stream = io.StringIO()
    progress = Progress(3, stream=stream, log_every_s=0.0)  # a line at every report
    progress.start -= 20.0
    lecture, lecture_done = _finished_flag()
    progress.window_done(1, "/data/talks/lecture.ogg", 30.0, 211.4, lecture_done)
    progress.window_done(2, "clip.wav", 4.2, 4.2, lambda: False)  # one window: not shown as under way
    progress.window_done(1, "/data/talks/lecture.ogg", 57.6, 211.4, lecture_done)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("; under way: lecture.ogg 30/211 s, 1 window")
    assert " 0/3 files, 0.00 h audio, 3 windows, " in lines[2]
    assert lines[2].endswith("; under way: lecture.ogg 58/211 s, 2 windows")
    lecture["done"] = True
    progress.update(211.4, error=False)
    assert "under way" not in stream.getvalue().splitlines()[-1]  # a finished file is forgotten
    assert "1/3 files, 0.06 h audio, 3 windows" in stream.getvalue().splitlines()[-1]


def test_progress_names_three_long_files_and_counts_the_rest():
    stream = io.StringIO()
    progress = Progress(5, stream=stream, log_every_s=1e9)
    for key in range(5):
        progress.window_done(key, f"part{key}.flac", 30.0, 600.0, lambda: False)
    assert stream.getvalue() == ""  # no line before log_every_s has passed
    assert progress.line().endswith("; under way: part0.flac 30/600 s, 1 window, part1.flac 30/600 s, 1 window, "
                                    "part2.flac 30/600 s, 1 window and 2 more")


def test_progress_says_when_the_decoder_compiles_and_nothing_when_off():
    stream = io.StringIO()
    progress = Progress(1, stream=stream)
    progress.compiling(16)
    progress.compiled(16, 41.26)
    assert stream.getvalue().splitlines() == [
        "whisper-nnx: compiling the decoder for batch 16 (first run; cached afterwards)",
        "whisper-nnx: the decoder for batch 16 is ready (41.3 s, compiling included)"]
    quiet = io.StringIO()
    off = Progress(1, stream=quiet, enabled=False, log_every_s=0.0)
    off.compiling(8)
    off.window_done(1, "lecture.ogg", 30.0, 211.0, lambda: False)
    off.update(211.0, error=False)
    assert quiet.getvalue() == "" and off.windows == 1 and off.under_way == {}


# --- json segments: id, seek, tokens ------------------------------------------------------------


def _timed_transcript() -> records.Transcript:
    segments = [{"seek": 0, "start": 0.0, "end": 2.0, "text": " Hello.", "tokens": [50363, 15496, 13, 50463],
                 "avg_logprob": -0.2, "compression_ratio": 0.9, "no_speech_prob": 0.01, "temperature": 0.0},
                {"seek": 3000, "start": 30.0, "end": 31.5, "text": " Again.", "tokens": [50363, 6521, 13, 50438],
                 "avg_logprob": -0.3, "compression_ratio": 0.8, "no_speech_prob": 0.02, "temperature": 0.0}]
    dropped = [{**segments[1], "seek": 1500, "text": " You", "tokens": [50363, 921, 50388], "dropped": "why"}]
    return records.transcript("talk.wav", text="Hello. Again.", language="en", duration_s=32.0, segments=segments,
                              windows=2, tokens=[t for s in segments for t in s["tokens"]],
                              dropped_segments=dropped)


def test_json_segments_lead_with_the_reference_fields_and_results_jsonl_has_no_tokens(tmp_path):
    transcript = _timed_transcript()
    (json_file,) = write_outputs(transcript, tmp_path, "talk", ("json",))
    written = json.loads(json_file.read_text())
    assert [list(s)[:6] for s in written["segments"]] == [["id", "seek", "start", "end", "text", "tokens"]] * 2
    assert [(s["id"], s["seek"], s["tokens"]) for s in written["segments"]] == [
        (0, 0, [50363, 15496, 13, 50463]), (1, 3000, [50363, 6521, 13, 50438])]
    assert "tokens" not in written and "tokens" not in written["dropped_segments"][0]
    record = records.as_dict(transcript)
    assert [s["seek"] for s in record["segments"]] == [0, 3000]
    assert all("tokens" not in s for s in [*record["segments"], *record["dropped_segments"]])
    read_back = {"path": "talk.wav", "segments": [dict(s) for s in transcript.segments]}  # a plain dict record
    assert records.as_dict(read_back)["segments"] == record["segments"]
    assert transcript["segments"][1]["tokens"] == [50363, 6521, 13, 50438]  # the Python result keeps them


def test_the_sink_writes_segment_tokens_to_the_json_file_only(tmp_path):
    with ResultSink(tmp_path, ("json",)) as sink:
        line = sink.write(_timed_transcript())
    from_jsonl = json.loads((tmp_path / "results.jsonl").read_text())
    assert from_jsonl == line and all("tokens" not in s for s in from_jsonl["segments"])
    written = json.loads((tmp_path / line["files"][0]).read_text())
    assert [s["tokens"] for s in written["segments"]] == [[50363, 15496, 13, 50463], [50363, 6521, 13, 50438]]
    assert {k: v for k, v in written.items() if k != "segments"} == \
        {k: v for k, v in from_jsonl.items() if k not in ("segments", "files")}


# --- the model: keyword options, named arrays, suppressed tokens ---------------------------------


@pytest.fixture(scope="module")
def joe() -> np.ndarray:
    return load_audio(DATA / "sample_joe.flac")


@pytest.mark.slow
def test_keyword_options_decode_as_the_options_object(tiny, joe):
    by_keywords = tiny.transcribe([joe], beam_size=5, language="en")[0]
    by_options = tiny.transcribe([joe], TranscribeOptions.from_kwargs(beam_size=5, language="en"))[0]
    assert by_keywords["tokens"] == by_options["tokens"] and by_keywords["text"] == by_options["text"]
    assert by_keywords["text"].strip()
    text_only = [r for _, r in tiny.transcribe_iter([joe], without_timestamps=True, temperature=0.0)]
    assert text_only[0]["text"].strip()
    assert max(text_only[0]["tokens"]) < tiny.tokenizer.timestamp_begin <= max(by_keywords["tokens"])
    with pytest.raises(TypeError, match="transcribe_iter\\(\\): TranscribeOptions has no option 'beams'"):
        tiny.transcribe_iter([joe], beams=5)  # raised at the call, before any record is asked for


@pytest.mark.slow
def test_named_arrays_name_their_records_and_errors(tiny, joe):
    unnamed = tiny.transcribe([joe], temperature=0.0)[0]
    named = tiny.transcribe({"joe/take-1": joe, "silence-of-nothing": np.zeros(0, np.float32)}, temperature=0.0)
    assert [r["path"] for r in named] == ["joe/take-1", "silence-of-nothing"]
    assert named[0]["text"] == unnamed["text"] and named[0]["tokens"] == unnamed["tokens"]
    assert unnamed["path"] == "<array>"
    assert named[1]["error_kind"] == records.INPUT and named[1]["error"].startswith("silence-of-nothing: ")
    clips = tiny.decode_clips([("joe-clip", joe)], temperature=0.0)
    assert clips[0]["path"] == "joe-clip" and clips[0]["text"].strip()


@pytest.mark.slow
def test_suppressed_token_ids_are_never_decoded(tiny, joe):
    plain = tiny.transcribe([joe], temperature=0.0)[0]
    first_text = next(t for t in plain["tokens"] if t < tiny.tokenizer.eot)
    args = cli.build_parser().parse_args(["transcribe", "x", f"--suppress-tokens=-1,{first_text}",
                                          "--temperature-increment-on-fallback", "0", "--beam-size", "0"])
    suppressed = tiny.transcribe([joe], cli.transcribe_options(args))[0]
    assert first_text not in suppressed["tokens"] and suppressed["text"].strip()


# --- a long file against the reference: progress and the json's segment fields ---------------


@pytest.fixture(scope="module")
def lecture_head(tiny, tmp_path_factory):
    """The recording's first 65 s as a named array, decoded by us (greedy, every window: as the
    reference runs) with a Progress that prints at every window, and its json file. The
    Transcriber is a copy that has decoded no batch yet (so it says it compiles)."""
    audio = load_audio(DATA / "longform" / "lecture.ogg")[:LECTURE_HEAD_S * SAMPLE_RATE]
    stream = io.StringIO()
    progress = Progress(1, stream=stream, log_every_s=0.0)
    fresh = copy.copy(tiny)
    fresh.compiled_batches = set()
    [(_, record)] = list(fresh.transcribe_iter([("lecture-head", audio)], progress=progress, language="en",
                                              temperature=0.0, skip_non_speech_s=None))
    progress.update(record["duration_s"], record["error"] is not None)
    out = tmp_path_factory.mktemp("json")
    (json_file,) = write_outputs(record, out, "lecture-head", ("json",))
    return audio, record, stream.getvalue().splitlines(), progress, json.loads(json_file.read_text())


@pytest.mark.slow
def test_progress_follows_the_windows_of_a_long_file(lecture_head):
    _, record, lines, progress, _ = lecture_head
    assert record["error"] is None and record["windows"] >= 3
    assert lines[0] == "whisper-nnx: compiling the decoder for batch 1 (first run; cached afterwards)"
    assert re.fullmatch(r"whisper-nnx: the decoder for batch 1 is ready \(\d+\.\d s, compiling included\)", lines[1])
    windows = [line for line in lines if line.startswith("[")]
    assert " 0/1 files, 0.00 h audio, 1 windows, " in windows[0]
    assert windows[0].endswith("; under way: lecture-head 30/65 s, 1 window")
    assert re.search(r"; under way: lecture-head \d+/65 s, 2 windows$", windows[1])
    assert progress.windows == record["windows"] and windows[-1].startswith("[########################] 1/1 files")


@pytest.mark.slow
def test_json_segments_have_the_reference_id_seek_and_tokens(tiny, lecture_head):
    """openai-whisper's transcribe on the same samples with the same weights: its segments' keys
    are all in ours, and id, seek and tokens are equal segment by segment."""
    import torch
    import whisper

    from reference import reference_model
    from whisper_nnx.engine.checkpoints.formats import read_checkpoint

    audio, _, _, _, ours = lecture_head
    checkpoint = read_checkpoint(tiny.checkpoint_path)
    torch.set_num_threads(2)
    ref = whisper.transcribe(reference_model(checkpoint.dims, checkpoint.params), audio, language="en",
                             temperature=0.0, fp16=False)
    assert len(ours["segments"]) == len(ref["segments"]) >= 4
    assert {s["seek"] for s in ref["segments"]} == {s["seek"] for s in ours["segments"]} and \
        len({s["seek"] for s in ours["segments"]}) >= 3  # windows after the first: seek > 0
    for mine, theirs in zip(ours["segments"], ref["segments"]):
        assert set(theirs) <= set(mine), set(theirs) - set(mine)
        assert (mine["id"], mine["seek"], mine["tokens"], mine["text"]) == \
            (theirs["id"], theirs["seek"], theirs["tokens"], theirs["text"])
        assert list(mine)[:6] == list(theirs)[:6] == ["id", "seek", "start", "end", "text", "tokens"]


# --- plain warning lines from the CLI --------------------------------------------------------------


@pytest.mark.slow
def test_cli_warnings_and_progress_are_plain_lines(tmp_path):
    """A run with a file that is not audio: its warning is one plain line (not absl's
    `W1206 12:00:00.000 ...`), and the log says when the decoder compiles."""
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is text, not a RIFF header" * 10)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", str(DATA / "sample_joe.flac"),
                           str(bad), "-o", str(tmp_path / "out"), "--language", "en", "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == cli.EXIT_INPUT_ERRORS, done.stderr
    lines = done.stderr.splitlines()
    warnings = [line for line in lines if str(bad) in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"whisper-nnx: warning: {bad}: "), lines
    assert not [line for line in lines if re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line)], lines
    assert "whisper-nnx: compiling the decoder for batch 1 (first run; cached afterwards)" in lines
    assert any(line.startswith("[########################] 2/2 files, ") and " 1 errors, " in line for line in lines)
