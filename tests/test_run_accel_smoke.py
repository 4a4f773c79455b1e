"""benchmarks/run_accel_gpu.sh --smoke: the lent GPU's script, every step on this CPU with tiny
sizes (random large models 64 wide, tiny.en's real weights through its int8 pack, the lecture
corpus), checked by the numbers its records hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BATCH, TOKENS = 4, 8  # the script's smoke batch and forced tokens a row


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The output folder of one smoke run (both stages), which must have passed every step."""
    out = tmp_path_factory.mktemp("accel-smoke")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/run_accel_gpu.sh", "--smoke", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (out / "all.log").read_text() if (out / "all.log").exists() else proc.stdout
    assert proc.returncode == 0, log[-3000:] + proc.stderr[-2000:]
    assert "all steps passed" in log
    return out


def load(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def corpus_of(rec: dict) -> dict:
    return rec["settings"]["corpus"]


@pytest.mark.slow
def test_device_only_records_count_windows_and_tokens(smoke):
    for name, batch in (("accel-tiny.en", 2), ("accel-tiny", BATCH)):
        rows = load(smoke, name)["results"]["batches"]
        assert [r["batch"] for r in rows] == [batch]
        row = rows[0]
        assert row["tokens"] == batch * TOKENS  # random weights: every row runs to its sample_len
        assert row["windows_per_s"] == pytest.approx(batch / row["median_s"])
        assert row["x_realtime"] == pytest.approx(30 * batch / row["median_s"])


@pytest.mark.slow
def test_peer_decodes_the_same_tokens_as_transformers(smoke):
    rec = load(smoke, "peer-large-v3")
    rows = {r["engine"]: r for r in rec["results"]["rows"]}
    assert set(rows) == {"whisper-nnx", "transformers"}
    for row in rows.values():
        assert "error" not in row, row
        assert row["batch"] == BATCH and row["rounds"] == 2  # both engines in both alternations
        assert row["tokens_per_row"] == [TOKENS] and row["tokens"] == BATCH * TOKENS
        assert row["samples_per_s"] == pytest.approx(BATCH / row["median_s"]) and row["samples_per_s"] > 0
        assert row["tokens_per_s"] == pytest.approx(BATCH * TOKENS / row["median_s"])
        assert 0 < row["audio_s"] <= 30 * BATCH  # real durations of utterances of at most 30 s
        assert row["x_realtime"] == pytest.approx(row["audio_s"] / row["median_s"])
        assert row["mlperf_equivalent_x"] == pytest.approx(row["samples_per_s"] * 23.6)
    assert rows["whisper-nnx"]["audio_s"] == rows["transformers"]["audio_s"]  # the same clips
    assert rows["whisper-nnx"]["vs_transformers"] == pytest.approx(
        rows["whisper-nnx"]["samples_per_s"] / rows["transformers"]["samples_per_s"])
    # float32 on a CPU, one checkpoint read by both: the same model, so the same greedy tokens
    assert rec["results"]["token_agreement"][str(BATCH)] >= 0.75
    weights = rec["settings"]["weights"]
    assert weights["model"] == "large-v3" and weights["dims"]["n_mels"] == 128 and weights["dims"]["n_vocab"] == 51865


@pytest.mark.slow
def test_files_to_records_with_random_weights_decode_forced_lengths(smoke):
    for name in ("feed-large-v3", "feed-large-v3-turbo"):
        rec = load(smoke, name)
        clips = corpus_of(rec)["clips"]
        expected = BATCH * max(1, min(2, clips // BATCH))  # whole batches of the corpus's clips
        runs = rec["results"]
        assert [r["run"] for r in runs] == ["clips (cold: compiles)", "clips"]
        for run in runs:
            assert run["files"] == run["windows"] == expected
            assert run["tokens"] == expected * TOKENS  # forced: every window its tokens, no end
            assert run["row_step_efficiency"] == 1.0
            assert 0 < run["audio_s"] <= 30 * expected
            assert run["files_per_s"] == pytest.approx(expected / run["wall_s"], rel=0.02)
            assert run["rate_x"] == pytest.approx(run["audio_s"] / run["wall_s"], rel=0.02)
        assert rec["settings"]["weights"] == "random" and rec["settings"]["forced_tokens"] == TOKENS


@pytest.mark.slow
def test_files_to_records_with_tiny_en_real_weights(smoke):
    rec = load(smoke, "feed-tiny.en")
    corpus = corpus_of(rec)
    assert rec["settings"]["weights"].startswith("real") and rec["settings"]["forced_tokens"] == 0
    runs = {r["run"]: r for r in rec["results"]}
    assert list(runs) == ["clips (cold: compiles)", "clips", "corpus (first)", "corpus"]
    for name in ("corpus (first)", "corpus"):
        run = runs[name]
        assert run["files"] == corpus["long_files"] + corpus["clips"]
        assert run["audio_s"] == pytest.approx(corpus["audio_s"], abs=0.5)
        assert run["windows"] > run["files"]  # the long reading takes several windows
        assert run["words"] > 2 * corpus["audio_s"]  # real speech, real text (about 2.5 words a second)
    assert runs["corpus"]["tokens"] == runs["corpus (first)"]["tokens"] > 0  # the same decode twice
    assert runs["clips"]["tokens"] == runs["clips (cold: compiles)"]["tokens"]
    assert runs["clips"]["files"] == BATCH


@pytest.mark.slow
def test_summary_puts_files_to_records_beside_device_only(smoke):
    rows = json.loads((smoke / "summary.json").read_text())["rows"]
    kinds = {(r["what"], r["model"]) for r in rows}
    assert ("files to records, clips", "large-v3") in kinds and ("files to records, corpus", "tiny.en") in kinds
    assert ("device-only clips, transformers, 8 tokens", "large-v3") in kinds
    feed = next(r for r in rows if r["what"] == "files to records, clips" and r["model"] == "large-v3")
    device = next(r for r in rows if r["what"] == "device-only clips, whisper-nnx, 8 tokens")
    assert feed["of_device_only"] == pytest.approx(feed["samples_per_s"] / device["samples_per_s"])
    assert device["vs_transformers"] > 0
