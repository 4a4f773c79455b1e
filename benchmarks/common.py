"""Helpers shared by the benchmarks: timing, machine/version/commit facts, result files.

Every benchmark writes one JSON record (`record(...)` + `write_record(...)`) holding what is
needed to reproduce and compare a number: the machine, the library versions, the JAX backend
and devices, the git commit (with a dirty flag), the settings and a UTC timestamp.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
# The versions a record against faster-whisper names.
PEER_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "faster-whisper", "ctranslate2")
RESULTS_DIR = REPO / "benchmarks" / "results"
# A target row's verdict in a report table (None: the row has no target).
VERDICT = {True: "met", False: "missed", None: "-"}
PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}  # --device -> JAX_PLATFORMS


def select_device(device: str) -> None:
    """--device auto|cpu|gpu|tpu: JAX's platform, set before jax is imported anywhere."""
    if device != "auto":
        os.environ["JAX_PLATFORMS"] = PLATFORMS[device]


# --- timing -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of repeated calls after warm-up."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (max(self.times) - min(self.times)) / self.median if self.median else 0.0

    def to_json(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "spread": self.spread,
                "times_s": self.times}


def block(tree: Any) -> Any:
    """`block_until_ready` on every array leaf (no-op on host values)."""
    import jax

    return jax.block_until_ready(tree)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times, each blocked until ready."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return Timing(times)


@dataclasses.dataclass
class Compiled:
    """A program compiled ahead of time, so that compile and run times are measured apart."""

    call: Callable  # the executable: the traced arguments only (static ones were fixed at lowering)
    seconds: float  # lowering + compiling
    temp_bytes: Optional[int]  # XLA's scratch memory, None where the backend does not say
    xla: dict  # XLA's cost analysis: {"flops", "bytes accessed"} (a loop body counted once)


def aot_compile(fn, *args, **static) -> Compiled:
    """Lower and compile the jitted `fn` (one of the engine's `Generator.programs`, say) for
    `args` and its static keyword arguments."""
    start = time.perf_counter()
    compiled = fn.lower(*args, **static).compile()
    seconds = time.perf_counter() - start
    try:
        temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # memory_analysis is backend-dependent
        temp = None
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # older jax: a list
    return Compiled(compiled, seconds, temp, {k: float(cost.get(k, 0.0)) for k in ("flops", "bytes accessed")})


def run_cli(path: Path, flags: list[str], env: dict, out: Path) -> dict:
    """One whole `whisper-nnx transcribe` process on one file into `out`: its text, words,
    segments, windows and wall time (or its error)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "whisper_nnx.engine.cli", "transcribe", str(path), "--output-dir",
                           str(out), "--quiet", "--no-progress", *flags], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    return {"text": rec["text"], "words": len(rec["text"].split()), "segments": len(rec["segments"]),
            "windows": rec.get("windows"), "wall_s": wall, "error": rec.get("error")}


def die_with_parent() -> None:
    """`preexec_fn` of a peer or worker process: on Linux it gets SIGTERM when this process dies
    (killed, timed out), instead of running on."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def timed_process(cmd: list[str], env: dict, prefix: str, timeout: int, cores: Optional[int] = None) -> dict:
    """Run `cmd` from the repository root as a whole process (on the first `cores` CPUs when
    given): its wall time to exit, the time until a stdout line holding `prefix` (its first
    result), that line's text after `prefix`, and its peak RSS; "error" when it failed."""
    import tempfile
    import threading

    def start_child() -> None:
        die_with_parent()
        if cores:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])

    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=start_child)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        first_s, text = None, None
        for line in proc.stdout:
            if first_s is None and prefix in line:
                first_s, text = time.perf_counter() - start, line.split(prefix, 1)[1].strip()
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        wall_s = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        timer.cancel()
        err.seek(0)
        tail = err.read().strip().splitlines()[-3:]
    out = {"wall_s": wall_s, "first_result_s": first_s, "text": text, "peak_rss_bytes": usage.ru_maxrss * 1024,
           "load_avg_1min_after": os.getloadavg()[0]}
    if proc.returncode or first_s is None:
        out["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- facts about the run ------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": _cpu_model(), "cores": cores, "ram_bytes": _ram_bytes(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_avg_at_start": list(os.getloadavg())}


def versions(packages=("jax", "jaxlib", "flax", "numpy", "torch", "openai-whisper")) -> dict:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def jax_info() -> dict:
    import jax

    return {"backend": jax.default_backend(),
            "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
            "process_count": jax.process_count(), "XLA_FLAGS": os.environ.get("XLA_FLAGS")}


def git_info() -> dict:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):  # a copy without .git (a lent device machine)
        return {"commit": os.environ.get("WHISPER_NNX_COMMIT"), "dirty": None}
    return {"commit": commit, "dirty": dirty}


def record(benchmark: str, settings: dict, results: Any, git: Optional[dict] = None,
           machine: Optional[dict] = None) -> dict:
    """The JSON record; pass `git` and `machine` taken when the run started (others may commit
    meanwhile, and the load average is wanted for the time measured)."""
    return {"benchmark": benchmark,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine or machine_info(), "versions": versions(), "jax": jax_info(),
            "git": git or git_info(), "settings": settings, "results": results}


def write_record(rec: dict, out: Optional[str | Path] = None, out_dir: Path = RESULTS_DIR) -> Path:
    """`out` if given, else benchmarks/results/<benchmark>-<YYYYMMDD-HHMMSS>-<short commit>[-dirty].json
    (the time keeps two runs of one day and commit apart)."""
    if out is not None:
        (path := Path(out).resolve()).parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2) + "\n")
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    day = rec["timestamp"][:19].replace("-", "").replace(":", "").replace("T", "-")
    commit = (rec["git"]["commit"] or "nogit")[:8] + ("-dirty" if rec["git"]["dirty"] else "")
    path = out_dir / f"{rec['benchmark']}-{day}-{commit}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    return path


# --- RESULTS.md ---------------------------------------------------------------------------------

# Report prose shared by the scripts' RESULTS.md sections, filled from a record by `report_fields`.
TITLE = "{day}, this machine: {cpu}, {cores} cores{device}"
COMMIT_LABEL = "commit {commit:.7}{uncommitted}"
RUN_HEAD = "`{command}` at commit `{commit:.8}`{dirty}"
VERSIONS = "jax {jax}, flax {flax}"
PEER_VERSIONS = VERSIONS + ", faster-whisper {faster_whisper}, ctranslate2 {ctranslate2}"
LOAD = "1-minute load {load:.1f} at the start"
NOTE = "Note: {}"
DIRTY = ("", " (dirty tree)")  # indexed by the record's dirty flag
UNCOMMITTED = ("", " + uncommitted changes")


def machine_title(rec: dict, device: bool = True) -> str:
    """RESULTS.md's section title of a record: its day, CPU, cores and accelerator if any
    (`device=False`: never)."""
    m, j = rec["machine"], rec["jax"]
    shown = device and j["backend"] != "cpu"
    return TITLE.format(day=rec["timestamp"][:10], cpu=m["cpu"], cores=m["cores"],
                        device=f", {j['devices'][0].split(' ', 1)[-1]}" if shown else "")


def commit_label(git: dict) -> str:
    """"commit abc1234", plus " + uncommitted changes" for a dirty tree."""
    return COMMIT_LABEL.format(commit=git["commit"] or "?", uncommitted=UNCOMMITTED[bool(git["dirty"])])


def relative(path: Path) -> Path:
    """`path` from the repository root when it lies inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def report_fields(rec: dict, path: Path, command: Optional[str] = None, unknown: str = "?") -> dict:
    """The fields every section template may use: `head`, `versions`, `peer_versions` and `load`
    (RUN_HEAD, VERSIONS, PEER_VERSIONS and LOAD filled), `record` (the record's path, from the
    repository root when inside it), `commit_label`, each version (`-` as `_`: `faster_whisper`),
    `cores`, `ram_gib`, `load_avg` and the settings; `command` replaces the settings' one, `unknown`
    stands for a missing commit."""
    g, m = rec["git"], rec["machine"]
    fields = {**rec["settings"], **{k.replace("-", "_"): x for k, x in rec["versions"].items()},
              "cores": m["cores"], "ram_gib": (m["ram_bytes"] or 0) / 2**30,
              "load_avg": m["load_avg_at_start"][0], "commit_label": commit_label(g),
              "record": relative(path)}
    fields["head"] = RUN_HEAD.format(command=command or fields.get("command"), commit=g["commit"] or unknown,
                                     dirty=DIRTY[bool(g["dirty"])])
    fields["load"] = LOAD.format(load=fields["load_avg"])
    versions = {k: fields.get(k) for k in ("jax", "flax", "faster_whisper", "ctranslate2")}
    fields.update(versions=VERSIONS.format(**versions), peer_versions=PEER_VERSIONS.format(**versions))
    return fields


def publish(rec: dict, table: str, subsection: str, report: str, script: str, argv: Optional[list[str]],
            results_md: bool) -> Path:
    """Print a benchmark's table, write its record and, with `results_md`, put its section into
    RESULTS.md: `subsection` and `report` are templates of `report_fields` plus `command` (the
    script's command line)."""
    print(table)
    out = write_record(rec)
    print(f"record: {out}")
    if results_md:
        command = " ".join([f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
        fields = {**report_fields(rec, out, command=command), "command": command}
        update_results_md(machine_title(rec), subsection.format(**fields), report.format(**fields) + "\n\n" + table)
    return out


def notes(texts: list[str]) -> list[str]:
    """A section's closing notes, one paragraph each."""
    return [NOTE.format(n) for n in texts]


RESULTS_HEADER = """# Benchmark results

Numbers measured on real machines by the scripts in this folder. Each run also writes a JSON
record (machine, versions, JAX devices, commit, settings, every repeat) to
`benchmarks/results/`. Times are medians of repeats after warm-up; ratios compare against a peer
measured in the same script run, which is what to quote (absolute times move with the machine
and its load).

## How to run

Each script's docstring and `--help` say how to run it.
"""


def update_results_md(section_title: str, subsection: str, body: str,
                      path: Path = REPO / "benchmarks" / "RESULTS.md") -> None:
    """Put `body` under `## section_title` / `### subsection` in RESULTS.md, replacing that
    subsection if it is there (other benchmarks' subsections of the same day stay), else adding
    it; the file and its header are created when missing."""
    text = path.read_text() if path.exists() else RESULTS_HEADER
    heading, sub = f"## {section_title}\n", f"### {subsection}\n"
    block = f"{sub}\n{body.strip()}\n"
    if heading not in text:
        path.write_text(text.rstrip() + f"\n\n{heading}\n{block}")
        return
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    end = len(text) if end < 0 else end + 1
    section = text[start:end]
    if sub in section:
        s0 = section.index(sub)
        s1 = section.find("\n### ", s0 + len(sub))
        section = section[:s0] + block + ("\n" + section[s1 + 1:] if s1 >= 0 else "\n")
    else:
        section = section.rstrip() + "\n\n" + block + "\n"
    path.write_text((text[:start] + section + text[end:]).rstrip() + "\n")
