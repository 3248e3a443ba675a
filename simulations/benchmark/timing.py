"""Timing helpers of the benchmark: the machine's conditions and medians of repeated calls."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch


def machine() -> dict:
    """The conditions of the run, stated in every report."""
    cpu = platform.processor() or "unknown"
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def median_seconds(function, repeats: int) -> float:
    """Median wall time of `function()` over `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        _synchronise()
        started = time.perf_counter()
        function()
        _synchronise()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _synchronise():
    if torch.cuda.is_available():
        torch.cuda.synchronize()
