"""This machine: its CPU (model, cores, the int8 instructions its flags list), its GPU's name, and the
logical CPUs a measurement's threads are pinned to. What a measured figure records of where it ran
(``where``)."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

class Share:
    """This process's CPU time over wall time while it ran (``with share.timing():`` around each stretch):
    about 1 per thread where it had its CPUs, less where other work took them."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu += time.process_time() - cpu0
            self.wall += time.perf_counter() - wall0

    def value(self, threads: int) -> float | None:
        return self.cpu / (self.wall * threads) if self.wall > 0 else None


INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")  # x86 and ARM (dot product)


def cpu_info() -> dict[str, Any]:
    """This CPU's model name, core count, and the int8 dot-product instructions its flags list (what
    makes int8 inference fast: AVX-512 VNNI, AVX-VNNI, AMX on x86; dot product / i8mm on ARM)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count() or 1, "int8_isa": [f for f in INT8_FLAGS if f in flags]}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX, as oneDNN sees it): there
    bf16 autocast is faster than fp32; elsewhere it is emulated, and slower."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gpu_name() -> str:
    """The name of CUDA device 0 (nvidia-smi), or "CUDA device 0" where it cannot be asked."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "CUDA device 0"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "CUDA device 0"


def where(provider: str, threads: int, cpus: tuple[int, ...] | None = None) -> dict[str, Any]:
    """What a measured figure's detail records of where it ran: the host, its GPU or its CPU (cores, int8
    instructions), the provider, the threads and the CPUs they were pinned to."""
    if provider == "CUDAExecutionProvider":
        return {"host": platform.node(), "gpu": gpu_name(), "provider": provider, "threads": threads}
    info = cpu_info()
    return {"host": platform.node(), "cpu": info["cpu"], "cores": info["cores"], "int8_isa": info["int8_isa"],
            "provider": provider, "threads": threads, **({"pinned_cpus": list(cpus)} if cpus else {})}


def pin_cpus(threads: int) -> tuple[int, ...] | None:
    """The logical CPUs that a measurement on ``threads`` threads is pinned to, one per thread: the first
    ``threads`` of those this process may run on; None where it may run on fewer (or the OS has no
    affinity call)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return tuple(allowed[:threads]) if len(allowed) >= threads else None


@contextmanager
def pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """The calling thread on ``cpus[0]`` meanwhile (sessions made with ``cpus`` pin their pool's threads
    to the others); nothing without ``cpus``. Its former affinity is restored after."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def unpinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Inside ``pinned(cpus)``: the calling thread free on every CPU of ``cpus`` meanwhile. ONNX Runtime's
    pool threads are made by the thread that creates a session and start with its affinity; one made while
    the caller is pinned to ``cpus[0]`` did not always move to its own CPU: create sessions in here."""
    if not cpus:
        yield
        return
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, {cpus[0]})
