"""Bulk transcription on Ray Data against a real local Ray cluster (a head and a worker node
started here): records equal to the single-process CLI's; a worker actor killed mid-run loses
and duplicates no row; a SIGKILLed driver resumes to exactly one record per input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from cli_runs import cli_environment, complete_records, kill_after_records  # noqa: E402
from dataset_fixtures import CORPUS, write_parquet  # noqa: E402

CLIPS = sorted(str(p) for p in CORPUS.glob("joe_*.flac"))[:8]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    local.add_node(num_cpus=1)
    local.wait_for_nodes()
    try:
        yield local.address
    finally:
        local.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cli_environment(tmp_path_factory.mktemp("compile-cache"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", *args, "--quiet", "--no-progress"]


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_ray_records_equal_the_single_process_clis(cluster, env, tmp_path):
    bad = tmp_path / "not audio.wav"
    bad.write_text("not audio")
    rows = write_parquet(tmp_path / "rows.parquet", ("joe_cat.flac", "espeak_apples.flac"))
    inputs = [*CLIPS[:5], str(bad), str(rows)]
    single = subprocess.run(_cli(*inputs, "--output-dir", str(tmp_path / "single")), env=env,
                            capture_output=True, text=True, timeout=600)
    on_ray = subprocess.run(_cli(*inputs, "--output-dir", str(tmp_path / "ray"), "--ray", cluster, "--ray-actors", "2",
                                 "--ray-rows", "2"), env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == on_ray.returncode == 3, (single.stderr[-2000:], on_ray.stderr[-2000:])
    ours = {r["path"]: r for r in _records(tmp_path / "single")}
    theirs = {r["path"]: r for r in _records(tmp_path / "ray")}
    assert len(ours) == len(CLIPS[:5]) + 1 + 2 and sorted(ours) == sorted(theirs)
    assert ours == theirs  # every field of every record
    assert theirs[str(bad)]["error_kind"] == "input"


def _actor_processes() -> list:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "RayTranscriber" in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.mark.slow
def test_a_killed_worker_actor_loses_no_row(cluster, env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli(*CLIPS, "--output-dir", str(out), "--ray", cluster, "--ray-actors", "2",
                                 "--ray-rows", "1"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(complete_records(out / "results.jsonl")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    actors = _actor_processes()
    assert proc.poll() is None and actors, "no actor to kill while the run was going"
    actors[0].send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    records = _records(out)
    assert sorted(r["path"] for r in records) == sorted(CLIPS)  # each row once
    assert all(r["error"] is None and r["text"].strip() for r in records)


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(cluster, env, tmp_path):
    out = tmp_path / "out"
    command = _cli(*CLIPS, "--output-dir", str(out), "--ray", cluster, "--ray-actors", "2", "--ray-rows", "1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert kill_after_records(proc, out / "results.jsonl", 2, timeout=300)
    done = {r["path"] for r in complete_records(out / "results.jsonl")}
    assert 2 <= len(done) < len(CLIPS)
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = _records(out)
    assert sorted(r["path"] for r in records) == sorted(CLIPS)  # the rest done, nothing twice
    assert json.loads((out / "summary.json").read_text())["skipped_already_done"] == len(done)


@pytest.mark.slow
def test_the_actor_takes_bytes_array_and_path_columns(tmp_path):
    """RayTranscriber called as Ray Data calls it, on the column kinds a user's dataset has."""
    import numpy as np

    from whisper_nnx.engine.audio import load_audio
    from whisper_nnx.engine.ray_job import RECORD_COLUMNS, RayTranscriber

    actor = RayTranscriber("tiny.en", options={"language": "en", "batch_size": 4},
                           compile_cache=str(tmp_path / "cache"))
    clips = CLIPS[:2]
    by_path = actor({"path": np.array(clips, dtype=object)})
    assert sorted(by_path) == sorted(RECORD_COLUMNS) and by_path["path"] == clips
    texts = by_path["text"]
    assert all(t.strip() for t in texts) and by_path["error"] == [None, None]
    by_bytes = actor({"bytes": np.array([open(c, "rb").read() for c in clips], dtype=object),
                      "path": np.array(clips, dtype=object)})
    assert by_bytes["text"] == texts and by_bytes["path"] == clips
    by_array = actor({"array": np.array([load_audio(c) for c in clips], dtype=object)})
    assert by_array["text"] == texts and by_array["path"] == ["<array>", "<array>"]
    assert json.loads(by_array["record"][0])["text"] == texts[0]
    assert "tokens" not in json.loads(by_array["record"][0])  # kept off every written record
    bad = actor({"bytes": np.array([b"not audio"], dtype=object), "path": np.array(["x.wav"], dtype=object)})
    assert bad["error_kind"] == ["input"] and "x.wav" in bad["error"][0]
    with pytest.raises(ValueError, match="entry, bytes, array or path"):
        actor({"audio": np.array([b""], dtype=object)})
