"""Where a measurement comes from: the machine, GPU, driver and software, and two probes.

``environment`` records versions without importing Triton (importing it would fix its
interpreter mode for the process); ``copy_bytes_per_s`` measures the device's copy bandwidth
(the ceiling a bandwidth-bound kernel can reach, read + written); ``kernel_names`` lists the
device kernels one call launches, from torch's profiler.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import l4
from l4.profiler.kernels import flash_arguments
from l4.profiler.measure import Timer, TimingConfig


def _nvidia_smi() -> dict[str, str] | None:
    query = "driver_version,name,clocks.max.sm,clocks.max.memory,power.limit"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    values = [v.strip() for v in first.split(",")]
    return dict(zip(query.split(","), values, strict=False))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            cwd=Path(l4.__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _triton_version() -> str | None:
    # from the installed metadata: importing triton here would fix its interpreter mode
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where the numbers come from: machine, GPU, driver and software versions."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _triton_version(),
        "numpy": np.__version__,
        "l4": l4.__version__,
        "l4_commit": _git_commit(),
        "flash_attention_arguments": sorted(flash_arguments()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        }
        env["nvidia_smi"] = _nvidia_smi()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return str(platform.processor() or platform.machine())


def copy_bytes_per_s(device: torch.device, num_bytes: int) -> float:
    """A device-to-device copy, bytes read + written per second (the HBM ceiling kernels reach)."""
    src = torch.randn(num_bytes // 4, device=device)
    dst = torch.empty_like(src)
    (t,) = Timer(device, 0).times_s([lambda: dst.copy_(src)], TimingConfig(warmup=2, repeats=10))
    return float(2.0 * src.numel() * 4 / t)  # float(): torch is untyped (Any) where not installed


def kernel_names(run: Callable[[], object], device: torch.device) -> list[str]:
    """The device kernels (CPU ops on a CPU) one call launches, as torch's profiler names them."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    want = "CUDA" if cuda else "CPU"
    return sorted({str(e.name) for e in prof.events() if e.device_type.name == want})[:20]
