"""The record a benchmark's results file opens with: date, commit, machine and command (no
dependency beyond the standard library, so the reference venv's scripts use it too)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine(**extra) -> dict:
    """{date, commit, cpu, cores, mem_gib, command} and ``extra``."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?")
    mem_gib = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        mem_gib = f"{kb / 2**20:.0f}"
    except (OSError, IndexError, ValueError):
        pass
    command = " ".join([Path(sys.executable).name, Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    return {"date": date.today().isoformat(), "commit": commit, "cpu": cpu,
            "cores": os.cpu_count(), "mem_gib": mem_gib, "command": command, **extra}
