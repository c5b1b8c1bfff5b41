"""What the benchmarks print about the machine they ran on (figures mean little without it)."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """`lscpu`'s model name, e.g. "AMD EPYC"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"
