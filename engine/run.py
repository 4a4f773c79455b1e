"""A bulk run: inputs in, one record per listed entry out, in an output directory that survives a
kill at any moment. The CLI (`whisper-nnx transcribe` / `eval`), `--ray` and Python share it:

    outcome = BulkRun(["corpus/", "list.jsonl"], "out", options=TranscribeOptions(language="en"),
                      formats=("json", "srt"), model="tiny.en", resume=True).run()
    outcome.exit_code, outcome.summary  # 0 every input transcribed, 3 some failed, 1 records missing

    lock     RunLock on the output folder (process 0); a URL: its staging folder, then the
             bucket's records pulled into it (`remote_output.BucketSink`)
    prepare  process 0: finish a merge cut short, remove a killed run's temp files, refuse old
             results without `resume`, repair every results file (the run's one repair), merge
             an earlier multi-process run's files, drop the records to redo (run errors; input
             errors with `retry_errors`)
    list     on a thread from the start (`planning.Listing`): entries as they are listed
    plan     one entry at a time as the producer asks for them (`planning.PlanStream`): entries
             still without a record; several processes: each its contiguous block of them
             (these list everything first)
    write    the producer's records (`LocalRecords`: a Transcriber in this process; or
             `ray_job.RayRecords`: Ray actors) through `ResultSink`, each repeat of a file
             listed again right after the record it repeats; summary.json
    merge    several processes: process 0 merges their records and summaries
    end      process 0: the check that every listed entry has its record (else EXIT_FAILED),
             results.parquet, the `finish` hook (eval's scores), the exit code; the bucket gets
             the records and the run's files

A run raises `UsageError` (a ValueError) for what cannot work, before any record is written,
`results.RunLocked` when another run holds the folder; anything else is the run failing
(rerun with `resume=True`): after the model started, a ValueError too comes as `RunFailed`.
At its end a run checks that every listed entry has its record: else its exit code is
EXIT_FAILED and `RunOutcome.line` names the entries missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Protocol, Sequence, Union

from absl import logging

from . import records, storage
from . import results as results_io
from .checkpoints.hub import DEFAULT_MODEL
from .entry import Entry
from .files import check_layout
from .inputs import SourceOptions
from .planning import Listing, PlanStream
from .progress import SUMMARY, Progress, merge_summaries, write_summary
from .sink import BackgroundWrites, ResultSink, SubtitleLayout
from .writers import check_formats

if TYPE_CHECKING:
    from .options import TranscribeOptions
    from .remote_output import BucketSink
    from .transcribe import Transcriber

# Exit statuses (README, "Resume, errors and what a run guarantees"); launch/ scripts read them.
EXIT_OK = 0  # every input has a transcript
EXIT_FAILED = 1  # the run itself failed: rerun with --resume
EXIT_USAGE = 2  # bad options or setup, found before any record was written
EXIT_INPUT_ERRORS = 3  # the run finished; some inputs have error records (see results.jsonl)


class UsageError(ValueError):
    """Options or setup that cannot work: reported before the model loads."""


class RunFailed(RuntimeError):
    """The run failed once records were being written (a ValueError there is no bad option)."""


class RecordProducer(Protocol):
    """Where a run's records come from."""

    def start(self, options: "TranscribeOptions") -> dict:
        """Get ready (load the model, join the cluster); returns the facts every record carries."""

    def records(self, entries: Iterable[Entry], options: "TranscribeOptions") -> Iterable[records.Transcript]:
        """One record per entry, in any order (`entries` may be an iterator that yields them as
        they are listed)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model a run loads, and how it is placed on the devices."""

    name: str = DEFAULT_MODEL  # local checkpoint, hub repo id or short name
    dtype: str = "auto"  # compute and weight dtype ("auto": by the device, transcribe.resolve_dtype)
    quantize: Optional[str] = None  # "int8": weight-only quantization
    mesh: Optional[str] = None  # device mesh spec, e.g. "data=-1"; None: one device
    dcn_mesh: Optional[str] = None  # multi-host: how the mesh spans hosts
    sharding: str = "dp+tp"  # partition-rule preset (with a mesh)
    allow_replicated: bool = False  # accept large weights the mesh cannot split
    continuous_batching: bool = False  # greedy/sampling windows over shared decoder slots (decode/slots.py)

    def facts(self, long_form: str, mesh: Optional[dict] = None) -> dict:
        """The run facts each record carries."""
        return {"model": self.name, "dtype": self.dtype, "quantize": self.quantize, "long_form": long_form,
                "mesh": mesh, "sharding": self.sharding if mesh is not None else None}

    def load(self) -> tuple["Transcriber", Optional[dict]]:
        """The model on this spec's mesh, and the mesh's description (None: one device)."""
        from whisper_nnx.sharding import rules_for
        from whisper_nnx.sharding.mesh import describe, make_mesh

        from .transcribe import Transcriber

        mesh = make_mesh(self.mesh, dcn=self.dcn_mesh) if self.mesh else None
        if mesh is not None:
            logging.info("mesh %s, sharding preset %s", describe(mesh)["shape"], self.sharding)
        transcriber = Transcriber(self.name, dtype=self.dtype, mesh=mesh,
                                  rules=rules_for(self.sharding) if mesh is not None else None,
                                  allow_replicated=self.allow_replicated, quantize=self.quantize)
        transcriber.decoder.continuous = self.continuous_batching
        return transcriber, describe(mesh) if mesh is not None else None


class LocalRecords:
    """Records made in this process: a model loaded by `start` (after the run is planned, so a
    setup error comes before the model loads), or a Transcriber already loaded."""

    def __init__(self, model: Union[str, ModelSpec, "Transcriber"] = DEFAULT_MODEL):
        self.model = ModelSpec(model) if isinstance(model, str) else model
        self.transcriber: Optional["Transcriber"] = None

    def start(self, options: "TranscribeOptions") -> dict:
        if isinstance(self.model, ModelSpec):
            self.transcriber, mesh = self.model.load()
            return {**self.model.facts(options.long_form.mode, mesh), "dtype": self.transcriber.dtype}
        from whisper_nnx.sharding.mesh import describe

        self.transcriber = self.model  # a loaded Transcriber knows its name and mesh
        mesh = describe(self.transcriber.mesh) if self.transcriber.mesh is not None else None
        return {"model": self.transcriber.model_name, "long_form": options.long_form.mode, "mesh": mesh}

    def records(self, entries: Iterable[Entry], options: "TranscribeOptions",
                progress: Optional[Progress] = None) -> Iterable[records.Transcript]:
        """`progress` is told of each batch the device decodes (windows, compiling); `entries`
        are taken as the reading side reaches them."""
        if self.transcriber is None:
            raise RuntimeError("LocalRecords.records before start")
        return (record for _, record in self.transcriber.transcribe_iter((e.source() for e in entries), options,
                                                                          progress=progress))


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """What `BulkRun.run` ends with."""

    exit_code: int  # EXIT_OK, or EXIT_INPUT_ERRORS when an entry has an input or run error
    summary: dict  # summary.json: files, errors, audio_hours, wall_s, rtfx (audio s / wall s), ...
    results: Path  # results.jsonl (an --output-dir URL: its staging copy, also in the bucket)
    lead: bool = True  # this process wrote the run's end (process 0): the summary is the run's
    missing: tuple[str, ...] = ()  # the first few entries without a record (summary["missing"]: how many)

    def line(self) -> str:
        """The one-line report the CLI prints at the end."""
        s = self.summary
        line = (f"whisper-nnx: {s['files']} files, {s['audio_hours']:.3f} h of audio, {s['errors']} errors, "
                f"{s['wall_s']:.1f} s ({s['rtfx']}x real time); results in {self.results}")
        if s.get("missing"):
            more = ", ..." if s["missing"] > len(self.missing) else ""
            line += (f"; {s['missing']} entries have no record ({', '.join(self.missing)}{more}): "
                     "rerun with --resume")
        return line


# finish(entries, records, out, summary): `records` an iterable of every record, read from `out`
# one line at a time on each iteration (results.RecordsOf)
FinishHook = Callable[[list, Iterable[dict], Path, dict], Optional[Iterable[str]]]


class BulkRun:
    """One run over `inputs` into `output_dir` (a folder or an fsspec URL); see the module
    docstring for its steps. `run()` does it once."""

    def __init__(self, inputs: Sequence[str], output_dir: Union[str, os.PathLike], *,
                 options: Optional["TranscribeOptions"] = None, formats: Sequence[str] = ("json", "txt"),
                 layout: SubtitleLayout = SubtitleLayout(),
                 model: Union[str, ModelSpec, "Transcriber"] = DEFAULT_MODEL, producer: Optional[RecordProducer] = None,
                 sources: SourceOptions = SourceOptions(),
                 resume: bool = False, retry_errors: bool = False, staging_dir: Optional[str] = None,
                 upload_every_s: float = 30.0, show: bool = False, progress: bool = True,
                 finish: Optional[FinishHook] = None, output_layout: str = "tree"):
        """`formats`: per-file formats (`writers.FORMATS`) plus "parquet" (results.parquet at the
        end); `producer`: where records come from (default `LocalRecords(model)`); `sources`:
        columns of dataset inputs; `resume` / `retry_errors`: continue a run in `output_dir`;
        `staging_dir` / `upload_every_s`: a URL's local folder and upload period; `show`: print
        each transcript; `progress`: progress bar or lines; `finish(entries, records, out,
        summary)`: runs on process 0 once every record is written (`records` iterable, read from
        the folder one line at a time on each pass), returns names of files it
        wrote there (eval's scores: mirrored to a bucket); `output_layout`: "tree" or "flat" (where
        the per-format files go, `files.OutputNames`)."""
        formats = tuple(formats)
        self.parquet = "parquet" in formats  # one table of the run's records, written at its end
        self.formats = check_formats(tuple(f for f in formats if f != "parquet"))
        if self.parquet:
            from .results_table import check_available
            check_available()
        if options is None:
            from .options import TranscribeOptions
            options = TranscribeOptions()
        self.inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        self.output_dir, self.options, self.layout = output_dir, options, layout
        self.producer = producer if producer is not None else LocalRecords(model)
        self.sources, self.resume, self.retry_errors = sources, resume, retry_errors
        self.staging_dir, self.upload_every_s = staging_dir, upload_every_s
        self.show, self.progress, self.finish = show, progress, finish
        self.output_layout = check_layout(output_layout)  # where per-format files go
        self.mirror: Optional["BucketSink"] = None
        self.writing = False  # records are being written: an error now is the run failing

    def run(self) -> RunOutcome:
        """Do the run (every process of a multi-process run calls this, after
        `multihost.initialize`)."""
        import jax

        multi = jax.process_count() > 1
        listing = Listing(self.inputs, self.sources)
        try:
            if listing.empty():
                raise UsageError("no inputs found")
            return self._run_listed(listing, multi)
        finally:
            listing.stop()

    def _run_listed(self, listing: Listing, multi: bool) -> RunOutcome:
        import jax

        if storage.is_url(str(self.output_dir)):
            if multi:
                raise UsageError("an --output-dir URL takes a single-process run; give each process a local "
                                 "--output-dir, or use one process per host with its own URL")
            from .remote_output import BucketSink
            self.mirror = BucketSink(str(self.output_dir), self.staging_dir, self.formats, self.upload_every_s)
            out = self.mirror.staging
        else:
            out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        lock = results_io.RunLock(out) if jax.process_index() == 0 else contextlib.nullcontext()
        # entered in order (lock, then the bucket's records pulled), left in reverse: the bucket
        # gets what was written (all of it when the run ended) before the lock goes
        try:
            with lock, self.mirror or contextlib.nullcontext():
                return self._run_locked(listing, out, multi)
        except ValueError as err:
            if not self.writing:
                raise  # a bad option or setup: nothing written yet
            raise RunFailed(f"{type(err).__name__}: {err}") from err

    def _run_locked(self, listing: Listing, out: Path, multi: bool) -> RunOutcome:
        import jax

        from whisper_nnx.sharding import multihost

        multihost.barrier("whisper-nnx-start")  # every process has read the old results before any writes
        if jax.process_index() == 0:
            self._prepare(out, multi)
        multihost.barrier("whisper-nnx-repaired")
        summary, failed = self._write(out, listing, multi)
        if multi:
            summary = self._merge(out, summary)
        if jax.process_index() != 0:  # its own records' failures
            return RunOutcome(EXIT_INPUT_ERRORS if failed else EXIT_OK, summary, out / results_io.RESULTS, False)
        return self._end(listing.all(), out, summary)

    def _prepare(self, out: Path, multi: bool) -> None:
        """Process 0, before any record is written: finish an interrupted merge, refuse old results
        without `resume`, repair records cut short (the run's one repair: its sinks do not repeat
        it), merge an earlier multi-process run's files and drop the records to retry."""
        results_io.finish_merge(out)
        if results_io.remove_temp_files(out):
            logging.info("%s: removed temp files of writes an earlier kill cut short", out)
        if next(results_io.iter_records(out), None) is not None and not self.resume:
            raise UsageError(f"{self.output_dir} already holds results: add --resume to continue that run, "
                             "or choose another --output-dir")
        for path in [out / results_io.RESULTS, *results_io.process_files(out)]:
            if results_io.repair(path):
                logging.warning("%s: removed a record cut short by an earlier kill", path)
        if not multi:  # an earlier multi-process run's records join results.jsonl first
            results_io.merge_process_results(out)
        retried = results_io.drop_retried(out, self.retry_errors)
        if retried:
            logging.warning("resuming: retrying %d entries whose records were errors", retried)

    def _write(self, out: Path, listing: Listing, multi: bool) -> tuple[dict, int]:
        """Transcribe this process's entries still without a record, as they are listed, and
        write one record per entry (each duplicate after the record it repeats): (the progress
        summary, how many of them are failures)."""
        import jax

        from whisper_nnx.sharding import multihost

        index = jax.process_index()
        # the old records, read one line at a time, before this run appends any
        finished, repeats_done = results_io.done_keys(results_io.iter_records(out))
        owns = None
        if multi:  # each process a contiguous block of the entries to do: their count first
            entries = listing.all()
            count = sum(step == results_io.TODO for step, *_ in results_io.plan_steps(entries, finished, repeats_done))
            owns = multihost.process_block(count).__contains__
        facts = self.producer.start(self.options)  # the model loads here, after every setup check
        self.writing = True
        progress = Progress(0, enabled=self.progress)
        own_file = results_io.process_file(index) if multi else results_io.RESULTS
        with BackgroundWrites(ResultSink(out, self.formats, self.layout, file_name=own_file, extra=facts,
                                         progress=progress, echo=self._written, repair=False,
                                         output_layout=self.output_layout, roots=self._roots())) as sink:
            plan = PlanStream(results_io.plan_steps(listing, finished, repeats_done), sink.write, progress,
                              owns=owns, lead=index == 0)
            todo = plan.todo()
            produced = self.producer.records(todo, self.options, progress=progress) \
                if isinstance(self.producer, LocalRecords) else self.producer.records(todo, self.options)
            for record in produced:
                plan.record(record)
            if not plan.finished:  # the producer stopped short: the end check names what has no record
                logging.error("the producer stopped before it had taken every entry")
        if plan.skipped:
            logging.info("resumed: %d of %d entries had their records already", plan.skipped, len(listing.entries))
        summary = progress.summary(plan.skipped)
        write_summary(out, summary, f"summary.process-{index:05d}.json" if multi else SUMMARY)
        return summary, sink.failed

    def _roots(self) -> list[str]:
        """Where tree names start: an input folder, or the folder of an input file, manifest or
        dataset (`whisper-nnx transcribe /data/a.flac` writes `OUT/a.txt`, as openai-whisper does)."""
        return [name if storage.is_dir(name) else (name.rsplit("/", 1)[0] if "/" in name else ".")
                for name in (str(i) for i in self.inputs)]

    def _written(self, record: dict) -> None:
        """A record is on disk: show it, hand it to the bucket."""
        if self.show:
            print(f"{record['path']}: {record['error'] or record['text']}", flush=True)
        if self.mirror is not None:
            self.mirror.write(record)

    @staticmethod
    def _merge(out: Path, summary: dict) -> dict:
        """Several processes: process 0 merges every process's records and summaries."""
        import jax

        from whisper_nnx.sharding import multihost

        multihost.barrier("whisper-nnx-results-written")
        if jax.process_index() == 0:
            results_io.merge_process_results(out)
            summary = merge_summaries(out)
        multihost.barrier("whisper-nnx-results-merged")
        return summary

    def _end(self, entries: list[Entry], out: Path, summary: dict) -> RunOutcome:
        """Process 0, every record written: the check that each entry has its record, the
        table, the finish hook, the exit code."""
        # every process's records, earlier runs' too, read one line at a time by the check, the
        # table and the finish hook (eval's scores) alike: memory does not grow with the run
        written = results_io.RecordsOf(out)
        failed, missing = _check_records(entries, out, None)
        repeated = results_io.repeated_names(entries)
        if missing:
            logging.error("%d listed entries have no record, e.g. %s: rerun with --resume", len(missing),
                          storage.redact(", ".join(missing[:SHOWN])))
        if repeated:
            logging.warning("%d entries share their name (--id-column value) with an earlier, different entry, "
                            "e.g. %s: each is transcribed; their records tell them apart by `row`",
                            len(repeated), ", ".join(repeated[:SHOWN]))
        summary = {**summary, "missing": len(missing), "repeated_names": len(repeated)}
        write_summary(out, summary)
        run_files = [SUMMARY]
        if self.parquet:
            from .results_table import write_parquet
            run_files.append(write_parquet(out, written).name)
        if self.finish is not None:
            run_files += list(self.finish(entries, written, out, summary) or ())
        if self.mirror is not None:
            for name in run_files:
                self.mirror.run_file(name)
        code = EXIT_FAILED if missing else EXIT_INPUT_ERRORS if failed else EXIT_OK
        return RunOutcome(code, summary, out / results_io.RESULTS, missing=tuple(missing[:SHOWN]))


SHOWN = 5  # entries named in a message about many


def _check_records(entries: list[Entry], out: Path, written: Optional[list[dict]]) -> tuple[int, list[str]]:
    """(how many records are failures, the entries without a record), over `written` or else the
    records in `out` read one at a time."""
    failed = 0

    def counted() -> Iterable[dict]:
        nonlocal failed
        for record in written if written is not None else results_io.iter_records(out):
            failed += records.is_failure(record)
            yield record

    missing = results_io.missing_entries(entries, counted())  # counts the failures as it reads
    return failed, missing
