"""Per-file test times for the suite's scheduling (tests/durations.json), from a JUnit XML report.

The suite runs each test file whole on one pytest-xdist worker, files taken from a queue as
workers free up: tests/conftest.py queues the files longest first (by these times), so the last
files handed out are short and the workers end together. Refresh after a change of the suite's
shape (a file added, a file's time changed by minutes):

    .venv/bin/python -m pytest --junitxml=/tmp/suite.xml
    .venv/bin/python tools/test_durations.py /tmp/suite.xml

Times are seconds of each file's tests (setup and teardown included) as measured in that run.
"""

from __future__ import annotations

import argparse
import collections
import json
import xml.etree.ElementTree as ET
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "durations.json"


def file_seconds(report: Path) -> dict[str, float]:
    """{test file (relative to tests/): seconds of its test cases} from a JUnit XML report."""
    totals: dict[str, float] = collections.defaultdict(float)
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname", "").split(".")
        # classname: "tests.test_x" or "tests.test_x.TestClass": the first part named test_*
        name = next((part for part in module if part.startswith("test_")), None)
        if name is not None:
            totals[f"{name}.py"] += float(case.get("time", 0.0))
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a JUnit XML report of a full run (pytest --junitxml)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    seconds = file_seconds(args.report)
    ordered = dict(sorted(((k, round(v, 1)) for k, v in seconds.items()), key=lambda kv: -kv[1]))
    args.out.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{len(ordered)} files, {sum(ordered.values()) / 60:.1f} test-minutes -> {args.out}")


if __name__ == "__main__":
    main()
