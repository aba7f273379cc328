"""Where models run: ONNX Runtime providers (CPU, CUDA), the CUDA libraries loaded before a
session needs them, and the session options every model of a server is loaded with."""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver (no error output)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
            return int(count.value)
        except AttributeError:
            return 0
    return 0


def select_providers(preference: str = "auto") -> list[str]:
    """Execution providers for a session.

    ``auto`` asks for CUDA only when ONNX Runtime has the CUDA provider *and* a
    CUDA device is present, so CPU-only machines start without CUDA load
    errors; ``cpu`` forces the CPU; ``cuda`` requires CUDA.

    Raises:
        ValueError: unknown preference, or ``cuda`` requested but unavailable.
    """
    import onnxruntime as ort

    preference = preference.lower()
    if preference == "cpu":
        return [CPU]
    cuda_ok = CUDA in ort.get_available_providers() and cuda_device_count() > 0
    if preference == "cuda":
        if not cuda_ok:
            raise ValueError("CUDA execution provider requested but no CUDA device is usable")
        return [CUDA, CPU]
    if preference != "auto":
        raise ValueError(f"unknown execution provider preference {preference!r}")
    return [CUDA, CPU] if cuda_ok else [CPU]


_preloaded = threading.Lock()
_preload_done = False


def preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN shipped as pip packages (nvidia-*), once."""
    global _preload_done
    import onnxruntime as ort

    with _preloaded:
        if _preload_done:
            return
        _preload_done = True
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception as exc:  # noqa: BLE001  best effort; session creation reports real failures
                log.debug("onnxruntime.preload_dlls failed: %s", exc)


GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class SessionOptions:
    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int = 0
    """0 lets ONNX Runtime choose (one per physical core)."""
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    """ONNX Runtime graph optimisation level: disable, basic, extended or all."""
    optimized_cache: Path | None = None
    """Folder where optimised graphs are kept per model checksum, runtime and provider."""
    io_binding: str = "auto"
    """auto (on for CUDA), on or off: bind inputs/outputs explicitly instead of ``session.run``."""
    spinning: bool = False
    """ONNX Runtime intra-op threads spin between runs (lower latency, more CPU use)."""
    batch_buckets: str = "auto"
    """auto (on for CUDA), on or off: pad each batch to the next of a few fixed sizes (powers of
    two up to ``max_batch``), all run once at load. On CUDA every new input shape costs a cuDNN
    algorithm search on its first run (tens of ms); with buckets that happens at load, never
    while serving. On a CPU padding only costs compute, so auto leaves it off there."""
    max_batch: int = 64
    """Largest batch the server runs (its batcher's maximum): the largest bucket."""
    cpu_mem_arena: bool = True
    """ONNX Runtime's CPU memory arena: buffers of the largest batch seen are kept for reuse
    (RSS stays at that high-water mark); off, every run allocates and frees its own."""
    patch_sampling: str = "auto"
    """host, graph or auto (graph on CUDA): see :mod:`cad.models.sampler`."""

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION:
            raise ValueError(
                f"unknown graph optimisation {self.graph_optimization!r}; "
                f"choose one of {', '.join(GRAPH_OPTIMIZATION)}"
            )
        if self.io_binding not in ("auto", "on", "off"):
            raise ValueError(f"io_binding must be auto, on or off, not {self.io_binding!r}")
        if self.batch_buckets not in ("auto", "on", "off"):
            raise ValueError(f"batch_buckets must be auto, on or off, not {self.batch_buckets!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {self.max_batch}")
        if self.patch_sampling not in ("auto", "host", "graph"):
            raise ValueError(
                f"patch_sampling must be auto, host or graph, not {self.patch_sampling!r}"
            )


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The padded batch sizes: powers of two below ``max_batch``, then ``max_batch``."""
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


def ort_session_options(options: SessionOptions, level: str) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = levels[level]
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = options.cpu_mem_arena
    if not options.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so
