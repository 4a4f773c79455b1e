"""Two real processes (4 simulated CPU devices each, one global 8-device mesh, gloo collectives)
produce the same transcripts as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from speech import write_flac

from whisper_nnx.engine.audio import load_audio
from whisper_nnx.engine.results import merge_process_results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *args],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, data_dir):
    files = [str(data_dir / f) for f in ("sample_joe.flac", "sample_german.flac", "sample_espeak.flac")]
    # 37 s of the long-form fixture: two windows in sequential long-form. (Natural text: a
    # repetitive one would fall back to sampling, whose draws depend on the batch's makeup.)
    long_file = tmp_path / "long lecture.flac"
    write_flac(long_file, load_audio(data_dir / "longform" / "lecture.ogg")[:37 * 16000])
    files += [str(tmp_path / "missing.wav"), str(long_file)]
    common = ["--model", "base", "--beam-size", "5", "--quiet", "--formats", "json"]
    single = _cli(*files, *common, "--output-dir", str(tmp_path / "one"), env={"JAX_PLATFORMS": "cpu"})
    port = _free_port()
    # Per host a 2x2 mesh (ICI), and the data axis across the two hosts (DCN): 4x2 globally.
    procs = [_cli(*files, *common, "--mesh", "data=-1,model=2", "--dcn-mesh", "data=2",
                  "--output-dir", str(tmp_path / "two"),
                  env={"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                       "WHISPER_NNX_COORDINATOR": f"127.0.0.1:{port}", "WHISPER_NNX_NUM_PROCESSES": "2",
                       "WHISPER_NNX_PROCESS_ID": str(i)})
             for i in range(2)]
    for proc in [single, *procs]:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 3, output[-3000:]  # finished; missing.wav is an input error
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    one, two = {r["path"]: r for r in one}, {r["path"]: r for r in two}  # records in completion order
    assert sorted(two) == sorted(one) == sorted(files) and len(_records(tmp_path / "two")) == len(files)
    for path in files:
        a, b = one[path], two[path]
        assert (a["text"], a["language"], a["segments"], a["error"]) == \
            (b["text"], b["language"], b["segments"], b["error"])
    assert [two[f]["language"] for f in files] == ["en", "de", "en", None, "en"]
    assert two[str(long_file)]["windows"] >= 2 and len(two[str(long_file)]["segments"]) >= 6
    assert two[files[0]]["mesh"] == {"shape": {"data": 4, "model": 2}, "devices": 8, "device_kind": "cpu",
                              "platform": "cpu", "processes": 2}
    assert not list((tmp_path / "two").glob("results.process-*"))


def test_merge_keeps_process_order_and_earlier_results(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"path": "old"}\n')
    (tmp_path / "results.process-00000.jsonl").write_text('{"path": "a"}\n{"path": "b"}\n')
    (tmp_path / "results.process-00001.jsonl").write_text('{"path": "c"}\n')
    merge_process_results(tmp_path)
    assert [r["path"] for r in _records(tmp_path)] == ["old", "a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]
