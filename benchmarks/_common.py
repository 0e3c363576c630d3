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


def run_child_in(python: str | Path, script: Path, *args: str) -> dict:
    """``run_child`` with another interpreter, e.g. a baseline library's own virtual environment."""
    out = subprocess.run([str(python), str(script), "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def venv_python(name: str, packages: list[str]) -> Path:
    """The interpreter of a cached virtual environment ``_work/NAME`` holding ``packages`` (pip specs).

    Made once (``python -m venv`` + ``pip install``) and remade only when the package list changes; it
    keeps a baseline library and its pinned dependencies out of ctrzoo's own environment.
    """
    import shutil

    path = WORK / name
    marker = path / "benchmark-packages.txt"
    wanted = "\n".join(packages) + "\n"
    if not (marker.exists() and marker.read_text() == wanted):
        print(f"creating {path} with {' '.join(packages)}", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True)
        marker.write_text(wanted)
    return path / "bin" / "python"


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later ``peak_rss_mb()`` is the peak of what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def bench_bundle(model: str, kind: str, rows: int = 50_000, steps: int | None = 5) -> tuple[Path, Path]:
    """A bundle of the benchmark shape (default config of ``kind``), briefly trained and exported.

    Latency does not depend on the weights, so a few steps suffice; cached in ``_work``.
    """
    from ctrzoo.data.prepare import prepare
    from ctrzoo.export import export_onnx
    from ctrzoo.train.run import train_bundle

    data = WORK / f"{kind}_{rows}_prepared"
    if not (data / "dataset.json").exists():
        prepare(kind, [synth_file(kind, rows)], data)
    out = WORK / f"bundle_{model}_{kind}_{rows}_{steps}"
    if not (out / "model.onnx").exists():
        train_bundle(model, data, out, overrides={"epochs": 1, "max_steps": steps}, progress=False, verbose=False)
        export_onnx(out)
    return out, data
