"""Datasets end to end through the CLI: a Parquet dataset written by `datasets`, a WebDataset
shard and a NeMo manifest of spans transcribe to the texts the same clips give as files; `eval`
scores them as jiwer does; `--formats parquet` holds every record; `--resume` redoes only the
rows whose records are missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")
jiwer = pytest.importorskip("jiwer")

import pyarrow.parquet as pq  # noqa: E402
from cli_runs import cli_environment  # noqa: E402
from dataset_fixtures import CLIPS, CORPUS, texts, write_nemo, write_parquet, write_shard  # noqa: E402


def _eval(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "eval", *args, "--quiet",
                           "--no-progress"], cwd=cwd, env=cli_environment(cache), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_dataset_sources_transcribe_like_files_and_eval_scores_them(tmp_path):
    from whisper_normalizer.english import EnglishTextNormalizer

    parquet = write_parquet(tmp_path / "clips.parquet")
    shard = write_shard(tmp_path / "shard-000.tar")
    nemo_dir = tmp_path / "nemo"
    nemo_dir.mkdir()
    manifest, _ = write_nemo(nemo_dir)
    files = [str(CORPUS / n) for n in CLIPS]
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _eval(str(parquet), str(shard), str(manifest), *files, "--output-dir", str(out),
                 "--formats", "json,parquet", cwd=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(records) == 4 * len(CLIPS) and all(r["error"] is None for r in records.values())

    by_file = {Path(f).name: records[f]["text"] for f in files}
    nemo_names = [json.loads(line) for line in manifest.read_text().splitlines()]
    recording = nemo_dir / "recording.wav"
    for i, name in enumerate(CLIPS):
        span = f"{recording}#t={nemo_names[i]['offset']:g},{nemo_names[i]['offset'] + nemo_names[i]['duration']:g}"
        assert records[f"{parquet}:{i}"]["text"] == by_file[name]
        assert records[f"{shard}:sample{i:03d}"]["text"] == by_file[name]
        assert records[span]["text"] == by_file[name]
    assert any(t for t in by_file.values())

    result = json.loads((out / "eval.json").read_text())
    norm, spoken = EnglishTextNormalizer(), texts()
    refs = [norm(spoken[n]) for n in CLIPS] * 3  # parquet, shard and manifest carry references; files do not
    hyps = [norm(by_file[n]) for n in CLIPS] * 3
    assert result["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps), abs=1e-3)
    assert result["inputs"] == 9 and result["inputs_without_reference"] == 3 and result["failed"] == []
    assert result["words"] == sum(len(r.split()) for r in refs)
    assert result["rtfx"] > 0 and result["wall_s"] > 0 and result["audio_s"] > 0
    assert f"| {result['wer']:.2f} |" in proc.stdout and (out / "eval.md").is_file()

    table = pq.read_table(out / "results.parquet")
    assert sorted(table.column("path").to_pylist()) == sorted(records)

    # Resume: drop two dataset rows' records; only they are redone, each once.
    lines = (out / "results.jsonl").read_text().splitlines()
    dropped = {f"{parquet}:1", f"{shard}:sample002"}
    (out / "results.jsonl").write_text("".join(x + "\n" for x in lines if json.loads(x)["path"] not in dropped))
    proc = _eval(str(parquet), str(shard), str(manifest), *files, "--output-dir", str(out), "--resume",
                 "--formats", "json,parquet", cwd=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in again) == sorted(records)
    assert [r["path"] for r in again[-2:]] and {r["path"] for r in again[-2:]} == dropped
    assert {r["path"]: r["text"] for r in again} == {p: r["text"] for p, r in records.items()}
    assert json.loads((out / "summary.json").read_text())["files"] == 2
    assert json.loads((out / "eval.json").read_text())["wer"] == pytest.approx(result["wer"])
    assert pq.read_table(out / "results.parquet").num_rows == len(records)
