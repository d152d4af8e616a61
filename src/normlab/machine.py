"""Where a run executes: the device, the CPU cores it may use, the compiler torch.compile needs, versions."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normlab import __version__
from normlab.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; asking for CUDA without it is a user error, raised before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("this torch build sees no CUDA GPU; use {device} cpu or auto", "device", name)
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"this machine has {torch.cuda.device_count()} CUDA device(s)", "device", name)
    return torch.device(name)


def cpu_cores() -> int:
    """The cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's name, as benchmarks quote the machine they measured."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    """This process's command, as a user typed it."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def check_threads(threads: int | None) -> None:
    """More torch threads than cores only make every step wait (an epoch took 250x longer at 64 on 2 cores)."""
    if threads is not None and threads > cpu_cores():
        raise UserError(f"more than the {cpu_cores()} CPU core(s) this process may use; give at most "
                        f"{cpu_cores()}, or drop it for one per core", "threads", threads)


def check_compiler(device: torch.device) -> None:
    """torch.compile builds C++ for the CPU: without a compiler it would fail deep inside the first step."""
    if device.type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:
        raise UserError("{compile} on the CPU needs a C++ compiler (g++) on PATH; install one "
                        "(e.g. apt install g++) or drop {compile}") from None


def environment(device: torch.device, data_source: str, data_md5: dict[str, str],
                sharing: dict[str, Any]) -> dict[str, Any]:
    """What a run folder records about where it ran, and how it shared the machine (``sharing``: backend,
    runs at once), which is what its seconds mean; ``sharing`` may name the command (a Ray driver's)."""
    return {
        "normlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
        "threads": torch.get_num_threads(), "sharing": {k: v for k, v in sharing.items() if k != "command"},
        "data_source": data_source, "data_md5": data_md5,
        "command": sharing.get("command") or command_line(),
    }
