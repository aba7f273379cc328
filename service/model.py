"""ONNX Runtime model: provider choice, validated loading, batched prediction.

The model contract (what ``cad model init`` and the trainer export): one input
``float32 [batch, 3, S, S]`` of pixel values 0..255 (normalisation is inside
the graph) and one output ``float32 [batch, K]`` of class probabilities
(softmax inside the graph); class ``K-1`` is "finding".
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from service.errors import ModelRejected
from service.registry import VersionInfo, sha256_file

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


def _preload_cuda_libraries() -> None:
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
            except Exception as exc:  # best effort; session creation reports real failures
                log.debug("onnxruntime.preload_dlls failed: %s", exc)


@dataclass(frozen=True)
class SessionOptions:
    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int = 0
    """0 lets ONNX Runtime choose (one per physical core)."""
    inter_op_threads: int = 0


class LoadedModel:
    """One validated model version with its ONNX Runtime session (thread-safe ``run``)."""

    def __init__(self, info: VersionInfo, session: Any) -> None:
        self.info = info
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        self.output_name: str = session.get_outputs()[0].name
        self.input_size: int = int(inp.shape[2])
        self.num_classes: int = int(session.get_outputs()[0].shape[1])
        self.provider: str = session.get_providers()[0]

    @property
    def name(self) -> str:
        return str(self.info.manifest.get("name", ""))

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def default_recipe(self) -> str:
        return str(self.info.manifest.get("recipe") or "polyp")

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities ``(n, K)`` for one batch ``(n, 3, S, S)``."""
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def predict(
        self,
        patches: npt.NDArray[np.float32],
        batch_size: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Probabilities for any number of patches, run in batches of at most ``batch_size``."""
        outputs = []
        for start in range(0, len(patches), batch_size):
            batch = np.ascontiguousarray(patches[start : start + batch_size])
            t0 = time.perf_counter()
            outputs.append(self.run(batch))
            if on_batch is not None:
                on_batch(len(batch), time.perf_counter() - t0)
        if not outputs:
            return np.empty((0, self.num_classes), dtype=np.float32)
        return np.concatenate(outputs)


def _check_signature(session: Any) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelRejected(f"expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}")
    shape = inputs[0].shape
    if (
        len(shape) != 4
        or shape[1] != 3
        or not isinstance(shape[2], int)
        or shape[2] != shape[3]
        or inputs[0].type != "tensor(float)"
    ):
        raise ModelRejected(f"input must be float32 [batch, 3, S, S], got {inputs[0].type} {shape}")
    out_shape = outputs[0].shape
    if len(out_shape) != 2 or not isinstance(out_shape[1], int) or out_shape[1] < 2:
        raise ModelRejected(f"output must be [batch, K>=2] probabilities, got {out_shape}")


def load_model(info: VersionInfo, options: SessionOptions) -> LoadedModel:
    """Load and check one registry version: checksum, signature, warm-up with finite outputs.

    Raises:
        ModelRejected: any check failed; the message says which.
    """
    import onnxruntime as ort

    path = info.model_path
    if not path.is_file():
        raise ModelRejected(f"version {info.version}: {path.name} is missing")
    expected = info.manifest.get("sha256")
    actual = sha256_file(path)
    if expected != actual:
        raise ModelRejected(
            f"version {info.version}: checksum mismatch (manifest {expected}, file {actual})"
        )
    if CUDA in options.providers:
        _preload_cuda_libraries()
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), so, providers=list(options.providers))
    except Exception as exc:
        raise ModelRejected(f"version {info.version}: ONNX Runtime cannot load it: {exc}") from None
    _check_signature(session)
    model = LoadedModel(info, session)
    rng = np.random.default_rng(0)
    warm = rng.uniform(0, 255, (2, 3, model.input_size, model.input_size)).astype(np.float32)
    try:
        probs = model.run(warm)
    except Exception as exc:
        raise ModelRejected(f"version {info.version}: warm-up run failed: {exc}") from None
    if probs.shape != (2, model.num_classes) or not np.all(np.isfinite(probs)):
        raise ModelRejected(f"version {info.version}: warm-up produced non-finite outputs")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or probs.min() < 0:
        raise ModelRejected(f"version {info.version}: outputs are not probabilities")
    return model
