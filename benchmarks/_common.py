"""Shared helpers for benchmarks: cached synthetic inputs and child-process measurements.

Each measured run happens in its own child process so its peak RSS is its own; the parent compares runs
made by the same script on the same machine, as ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"


def synth_file(kind: str, rows: int, seed: int = 1) -> Path:
    """A cached ``ctrzoo synth`` output (generated once per (kind, rows, seed))."""
    from ctrzoo.synth import generate

    WORK.mkdir(exist_ok=True)
    ext = "tsv" if kind == "criteo" else "csv"
    path = WORK / f"{kind}_{rows}_{seed}.{ext}"
    if not (path.exists() and Path(f"{path}.synth.json").exists()):
        print(f"generating {rows:,d} {kind} rows -> {path}", file=sys.stderr)
        generate(kind, rows, seed, path, progress=sys.stderr.isatty())
    return path


def run_child(script: Path, *args: str) -> dict:
    """Run ``script --child ARGS`` and parse the JSON line it prints last."""
    out = subprocess.run([sys.executable, str(script), "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """VmHWM of this process (unlike ru_maxrss it is not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")
