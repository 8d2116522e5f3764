"""Markdown output of the benchmarks: the machine they ran on, tables, and one section of
docs/benchmarks.md replaced in place so that sections written by other benchmarks survive."""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

INTRO = """# Benchmarks

Numbers measured by the scripts in `bench/` on the machine each section names. Every section is
written by its own benchmark and replaced only by a rerun of that benchmark.
"""


def log(message: str) -> None:
    """A progress line on stderr, timestamped (stdout stays for results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def invocation(script: str, argv: list[str] | None) -> str:
    """The command line a report names as its writer, in backticks."""
    return "`" + " ".join([script, *(argv if argv is not None else sys.argv[1:])]) + "`"


def exit_status(failures: list[str]) -> int:
    """Log every failure; the script's exit status (1 when there was any)."""
    for line in failures:
        log(f"FAIL {line}")
    return 1 if failures else 0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    """1-minute load average: shows whether anything else competed for the cores during the run."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def machine_rows() -> list[tuple[str, str]]:
    haproxy = _first_line(["haproxy", "-v"])
    match = re.search(r"version (\S+)", haproxy)
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("RAM", _ram_gib()),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("Dovecot", _first_line(["dovecot", "--version"])),
        ("HAProxy", match.group(1) if match else haproxy),
        ("date", time.strftime("%Y-%m-%d %H:%M %Z")),
    ]


def replace_section(document: str, heading: str, body: str) -> str:
    """`document` with the `## heading` section (up to the next `## `) replaced by heading + body;
    the section is appended when missing, and an empty document gets the intro first."""
    section = f"## {heading}\n\n{body.strip()}\n"
    if not document.strip():
        document = INTRO
    pattern = re.compile(rf"^## {re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section + "\n", document, count=1).rstrip("\n") + "\n"
    return document.rstrip("\n") + "\n\n" + section


def write_section(path: Path, heading: str, body: str) -> None:
    existing = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(existing, heading, body))
