"""What every benchmark records about the machine and the command, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def machine_meta(script: str, load_before: tuple[float, float, float]) -> dict[str, object]:
    """Python, CPUs, load averages (before the runs and now) and the command line."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_at_end": os.getloadavg(),
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
    }


def write_results(out: Path, name: str, meta: dict[str, object], rows: object) -> None:
    """`out/name.json`: {"meta": ..., "rows": ...}, keys sorted."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2, sort_keys=True) + "\n"
    )
