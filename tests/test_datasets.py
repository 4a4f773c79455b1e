"""Dataset inputs without the model: Parquet, save_to_disk, WebDataset and NeMo manifests expand
into entries with stable names, the reference texts, and the very bytes/samples of the clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("datasets")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from dataset_fixtures import CLIPS, CORPUS, texts, write_nemo, write_parquet, write_saved, write_shard  # noqa: E402

from whisper_nnx.engine import datasets as ds  # noqa: E402
from whisper_nnx.engine.audio import AudioDecodeError, load_audio  # noqa: E402
from whisper_nnx.engine.inputs import SourceOptions, expand_inputs  # noqa: E402
from whisper_nnx.engine.results import plan_run  # noqa: E402


def _bytes(entry) -> bytes:
    """The bytes the decoder is given for a dataset entry: what its opener returns."""
    with entry.opener() as handle:
        return handle.read()


def test_parquet_rows_are_entries_with_the_clips_bytes_and_texts(tmp_path):
    path = write_parquet(tmp_path / "clips.parquet")
    entries = list(expand_inputs([str(path)]))
    assert [e.name for e in entries] == [f"{path}:{i}" for i in range(len(CLIPS))]
    assert [e.text for e in entries] == [texts()[n] for n in CLIPS]
    assert [_bytes(e) for e in entries] == [(CORPUS / n).read_bytes() for n in CLIPS]
    decoded = load_audio(entries[1].source())
    np.testing.assert_array_equal(decoded, load_audio(CORPUS / CLIPS[1]))
    named = list(expand_inputs([str(path)], SourceOptions(id_column="id")))
    assert [e.name for e in named] == [f"utt-{n[:-5]}" for n in CLIPS]


def test_parquet_reads_audio_one_row_group_at_a_time(tmp_path):
    clips = CLIPS * 3
    path = write_parquet(tmp_path / "many.parquet", clips, row_group_size=1)
    assert pq.ParquetFile(path).metadata.num_row_groups == len(clips)
    rows = ds.TABLES.open("parquet", str(path), SourceOptions())
    reads = []
    read_group = rows.read_group
    rows.read_group = lambda group, cols: reads.append((group, tuple(cols))) or read_group(group, cols)
    entries = list(rows.entries())
    assert all(cols == ("text",) for _, cols in reads)  # listing reads no audio
    reads.clear()
    for entry in entries:
        assert _bytes(entry) == (CORPUS / clips[int(entry.name.rsplit(":", 1)[1])]).read_bytes()
    assert [g for g, cols in reads] == list(range(len(clips)))  # each group's audio read once, in order


def test_row_groups_held_for_later_rows_stay_within_their_bytes_across_tables(tmp_path, monkeypatch):
    """Every open table's row groups of audio share one bound in bytes (the reading side's
    --max-audio-in-memory counts them): reading a row of each of four files, each group of three
    clips, holds no more than the bound; each group is read once while its rows are read in order,
    and a group larger than the bound is still read once for all its rows."""
    paths = [str(write_parquet(tmp_path / f"t{i}.parquet", CLIPS[:3], row_group_size=3)) for i in range(4)]
    group_bytes = pq.ParquetFile(paths[0]).read_row_group(0, columns=["audio"]).column("audio").nbytes
    tables = ds.OpenTables(cache_bytes=int(1.5 * group_bytes))
    monkeypatch.setattr(ds, "TABLES", tables)
    reads = []
    parquet_rows = ds.parquet_rows

    def counted(path, options):
        rows = parquet_rows(path, options)
        read_group = rows.read_group
        rows.read_group = lambda group, cols: reads.append((path, group)) or read_group(group, cols)
        return rows

    monkeypatch.setattr(ds, "parquet_rows", counted)
    for path in paths:
        for entry in tables.open("parquet", path, SourceOptions()).entries():
            assert _bytes(entry) == (CORPUS / CLIPS[int(entry.name.rsplit(":", 1)[1])]).read_bytes()
            assert tables.groups.held_bytes() <= 1.5 * group_bytes
    audio_reads = [r for r in reads if r[1] == 0]
    assert tables.groups.held_bytes() == group_bytes  # the last file's group, alone
    # listing reads the text column once per file; the audio group once per file, not once per row
    assert len(audio_reads) == 2 * len(paths)
    small = ds.OpenTables(cache_bytes=group_bytes // 4)  # a group over the bound: held alone, read once
    monkeypatch.setattr(ds, "TABLES", small)
    reads.clear()
    for entry in small.open("parquet", paths[0], SourceOptions()).entries():
        _bytes(entry)
    assert len(reads) == 2 and small.groups.held_bytes() == group_bytes


_CONCURRENT_READS = """
import sys, threading
from whisper_nnx.engine import datasets as ds
from whisper_nnx.engine.inputs import SourceOptions
path, expected = sys.argv[1], [open(p, "rb").read() for p in sys.argv[2:]]
ds.TABLES = ds.OpenTables(cache_bytes=0)  # every row reads its group again: reads overlap
rows = ds.TABLES.open("parquet", path, SourceOptions())
entries = list(rows.entries())
wrong = []

def read(start):
    for i in range(start, start + 240):
        entry = entries[i % len(entries)]
        with entry.opener() as handle:
            if handle.read() != expected[i % len(entries)]:
                wrong.append(entry.name)
        if i % 7 == 0:  # the listing's read of the text column, beside the audio reads
            list(rows.entries())

threads = [threading.Thread(target=read, args=(k * 5,)) for k in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(wrong))
"""


def test_rows_of_one_parquet_file_read_from_several_threads_at_once(tmp_path):
    """The reading side decodes on several threads and lists on another: rows of one Parquet
    file are read at once from all of them (pyarrow's ParquetFile is not safe for that: reads
    of one file from several threads crashed the process, a run's eval in CI among them). Run in
    a process of its own, so a crash fails this test, not the worker."""
    import subprocess
    import sys

    clips = CLIPS * 4
    path = write_parquet(tmp_path / "many.parquet", clips, row_group_size=1)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _CONCURRENT_READS, str(path),
                           *[str(CORPUS / n) for n in clips]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0"]  # every row's bytes, whichever thread read them


def test_open_tables_serve_their_rows_openers_and_let_the_oldest_go(tmp_path, monkeypatch):
    """A row's opener reads from the table its listing opened; a table let go (past `limit`, or
    in another process such as a Ray actor) is opened again by its first opener."""
    paths = [str(write_parquet(tmp_path / f"t{i}.parquet", CLIPS[i:i + 1])) for i in range(3)]
    tables = ds.OpenTables(limit=2)
    monkeypatch.setattr(ds, "TABLES", tables)
    opened = []
    parquet_rows = ds.parquet_rows
    monkeypatch.setattr(ds, "parquet_rows", lambda path, options: opened.append(path) or parquet_rows(path, options))
    entries = [next(tables.open("parquet", path, SourceOptions()).entries()) for path in paths]
    assert opened == paths
    assert [_bytes(e) for e in entries[:0:-1]] == [(CORPUS / n).read_bytes() for n in CLIPS[:0:-1]]
    assert opened == paths  # both still open: read from the listing's tables
    assert _bytes(entries[0]) == (CORPUS / CLIPS[0]).read_bytes()
    assert opened == paths + paths[:1]  # the first was let go: opened again
    fresh = ds.OpenTables()  # another process
    monkeypatch.setattr(ds, "TABLES", fresh)
    assert _bytes(entries[1]) == (CORPUS / CLIPS[1]).read_bytes() and opened[-1] == paths[1]


def test_audio_column_detection_and_errors(tmp_path):
    clip = (CORPUS / CLIPS[0]).read_bytes()
    plain = tmp_path / "plain.parquet"  # no Hugging Face metadata: the struct with `bytes` is found
    pq.write_table(pa.table({"speech": pa.array([{"bytes": clip, "path": "a.flac"}, None]),
                             "text": ["a", "b"]}), plain)
    entries = list(expand_inputs([str(plain)]))
    assert _bytes(entries[0]) == clip
    with pytest.raises(AudioDecodeError, match="has no audio"):
        load_audio(entries[1].source())
    binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"audio": pa.array([clip], pa.binary())}), binary)
    assert _bytes(next(expand_inputs([str(binary)]))) == clip
    wrong = list(expand_inputs([str(plain)], SourceOptions(audio_column="nope")))
    assert len(wrong) == 1 and wrong[0].error and "no column 'nope'" in wrong[0].error
    none = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": ["a"]}), none)
    [entry] = expand_inputs([str(none)])
    assert "no audio column" in entry.error and "--audio-column" in entry.error
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really")
    [entry] = expand_inputs([str(corrupt)])
    assert entry.name == str(corrupt) and "cannot read" in entry.error


def test_rows_by_path_are_read_relative_to_the_dataset(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.flac").write_bytes((CORPUS / CLIPS[0]).read_bytes())
    path = tmp_path / "by_path.parquet"
    pq.write_table(pa.table({"audio": pa.array([{"bytes": None, "path": "audio/a.flac"}],
                                               pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}), path)
    [entry] = expand_inputs([str(path)])
    np.testing.assert_array_equal(load_audio(entry.source()), load_audio(CORPUS / CLIPS[0]))


def test_saved_dataset_folder_gives_the_same_rows(tmp_path):
    folder = write_saved(tmp_path / "saved")
    entries = list(expand_inputs([str(folder)]))
    assert len(entries) == len(CLIPS) and all(":" in e.name and e.name.startswith(str(folder)) for e in entries)
    assert [_bytes(e) for e in entries] == [(CORPUS / n).read_bytes() for n in CLIPS]
    assert [e.text for e in entries] == [texts()[n] for n in CLIPS]


@pytest.mark.parametrize("json_text", [False, True])
def test_webdataset_samples(tmp_path, json_text):
    shard = write_shard(tmp_path / "shard-000.tar", json_text=json_text)
    entries = list(expand_inputs([str(shard)]))
    assert [e.name for e in entries] == [f"{shard}:sample{i:03d}" for i in range(len(CLIPS))]
    assert [e.text for e in entries] == [texts()[n] for n in CLIPS]
    assert [_bytes(e) for e in entries] == [(CORPUS / n).read_bytes() for n in CLIPS]


def test_webdataset_sample_without_audio_is_an_error_entry(tmp_path):
    import io
    import tarfile

    shard = tmp_path / "odd.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("lonely.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    [entry] = expand_inputs([str(shard)])
    assert entry.name == f"{shard}:lonely" and "no audio member" in entry.error and entry.text == "hello"


def test_folder_walk_expands_datasets_and_media(tmp_path):
    write_parquet(tmp_path / "b.parquet", CLIPS[:2])
    write_shard(tmp_path / "c.tar", CLIPS[:1])
    (tmp_path / "a.flac").write_bytes((CORPUS / CLIPS[0]).read_bytes())
    names = [e.name for e in expand_inputs([str(tmp_path)])]
    assert names == [str(tmp_path / "a.flac"), f"{tmp_path / 'b.parquet'}:0", f"{tmp_path / 'b.parquet'}:1",
                     f"{tmp_path / 'c.tar'}:sample000"]


def test_nemo_manifest_spans_decode_to_the_clips(tmp_path):
    manifest, spans = write_nemo(tmp_path)
    entries = list(expand_inputs([str(manifest)]))
    recording = str(tmp_path / "recording.wav")
    assert [e.name for e in entries] == [f"{recording}#t={round(s, 4):g},{round(s, 4) + round(d, 4):g}"
                                         for s, d in spans]
    assert [e.text for e in entries] == [texts()[n] for n in CLIPS]
    for entry, name in zip(entries, CLIPS):
        clip = load_audio(CORPUS / name)
        got = load_audio(entry.source())
        assert got.size == clip.size + (-clip.size % 160)  # the span: the clip and its padding, exactly
        np.testing.assert_array_equal(got[:clip.size], clip)
        assert not got[clip.size:].any()


def test_nemo_fields_and_bad_lines(tmp_path):
    manifest = tmp_path / "m.jsonl"
    lines = [{"audio_filepath": "x.wav", "duration": 3.2, "text": "whole file"},  # no offset: the whole file
             {"audio_filepath": "/abs/y.wav", "offset": 1.5},
             {"audio_filepath": "z.wav", "offset": -1},
             {"path": "p.wav", "offset": 2, "duration": 1}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    entries = list(expand_inputs([str(manifest)]))
    assert entries[0].name == str(tmp_path / "x.wav") and entries[0].text == "whole file"
    assert entries[1].name == "/abs/y.wav#t=1.5" and entries[1].offset_s == 1.5 and entries[1].duration_s is None
    assert entries[2].error and '"offset"' in entries[2].error
    assert entries[3].name == "p.wav#t=2,3" and (entries[3].offset_s, entries[3].duration_s) == (2.0, 1.0)


def test_dataset_row_names_are_stable_so_resume_skips_done_rows(tmp_path):
    path = write_parquet(tmp_path / "clips.parquet")
    first = list(expand_inputs([str(path)]))
    done = [{"path": first[0].name, "error": None, "error_kind": None},
            {"path": first[2].name, "error": None, "error_kind": None}]
    plan = plan_run(list(expand_inputs([str(path)])), done)
    assert [e.name for e in plan.todo] == [first[1].name] and plan.skipped == 2
