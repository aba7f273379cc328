"""ONNX Runtime model: provider choice, validated loading, batched prediction.

The model contract (what ``cad model init`` and the trainer export): one input
``float32 [batch, 3, S, S]`` of pixel values 0..255 (normalisation is inside
the graph) and one output ``float32 [batch, K]`` of class probabilities
(softmax inside the graph); class ``K-1`` is "finding".
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cad.aift.patches import Box, extract_patches, parse_recipe, patch_affines
from cad.errors import ModelRejected
from cad.models.providers import (
    CUDA,
    SessionOptions,
    batch_buckets,
    ort_session_options,
    preload_cuda_libraries,
)
from cad.models.registry import VersionInfo, sha256_file
from cad.models.sampler import AFFINES, IMAGES, INDEX, MIN_OPSET, ImagePatches, pack

log = logging.getLogger(__name__)


class LoadedModel:
    """One validated model version with its ONNX Runtime session (thread-safe ``run``)."""

    def __init__(
        self,
        info: VersionInfo,
        session: Any,
        io_binding: bool = False,
        optimized_from_cache: bool = False,
        buckets: tuple[int, ...] = (),
        sampler: Any = None,
    ) -> None:
        self.info = info
        self.session = session
        self.sampler = sampler
        """The session of the model with the patch sampler in front (the graph path), or None."""
        self.io_binding = io_binding
        self.buckets = buckets
        """Padded batch sizes (empty: batches run at their own size)."""
        self.optimized_from_cache = optimized_from_cache
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        self.output_name: str = session.get_outputs()[0].name
        self.input_size: int = int(inp.shape[2])
        self.num_classes: int = int(session.get_outputs()[0].shape[1])
        self.provider: str = session.get_providers()[0]

    @property
    def name(self) -> str:
        return self.info.manifest.name

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def precision(self) -> str:
        """fp32, or the variant's name (int8, fp16) when a variant is served."""
        return self.info.manifest.variant

    @property
    def default_recipe(self) -> str:
        return self.info.manifest.recipe

    @property
    def samples_on_device(self) -> bool:
        """Patches are cut by the sampling graph (send :class:`ImagePatches`), not in numpy."""
        return self.sampler is not None

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities ``(n, K)`` for one batch ``(n, 3, S, S)``, run as given (the batchers in
        :mod:`cad.models.batcher` pad it to a bucket first)."""
        return self._run(self.session, {self.input_name: batch})

    def run_images(self, parts: list[ImagePatches], size: int) -> npt.NDArray[np.float32]:
        """Probabilities ``(size, K)`` for the patches of ``parts``, in order, cut on the model's
        device by the sampling graph; rows past the parts' patches are bucket padding."""
        canvas, affines, index = pack(parts, size)
        return self._run(self.sampler, {IMAGES: canvas, AFFINES: affines, INDEX: index})

    def _run(self, session: Any, feeds: dict[str, npt.NDArray[Any]]) -> npt.NDArray[np.float32]:
        if self.io_binding:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            binding.bind_output(self.output_name, "cpu")
            session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = session.run([self.output_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)


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


def _session(path: Path, sha256: str, options: SessionOptions, version: int) -> tuple[Any, bool]:
    """An ONNX Runtime session; with a cache folder, the optimised graph is saved on the first
    load (keyed by model checksum, runtime version, providers and level) and loaded as is later.
    Returns (session, loaded from the cache)."""
    import onnxruntime as ort

    providers = list(options.providers)
    cache = None
    if options.optimized_cache is not None and options.graph_optimization != "disable":
        key = (
            f"{sha256[:32]}-ort{ort.__version__}-{'+'.join(providers)}-{options.graph_optimization}"
        )
        cache = Path(options.optimized_cache) / f"{key}.onnx"
        if cache.is_file():
            try:
                return ort.InferenceSession(
                    str(cache), ort_session_options(options, "disable"), providers=providers
                ), True
            except Exception as exc:  # noqa: BLE001  a damaged cache entry is rebuilt, never fatal
                log.warning("optimised graph cache %s unusable (%s); rebuilding it", cache, exc)
                cache.unlink(missing_ok=True)
    so = ort_session_options(options, options.graph_optimization)
    tmp = None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        so.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # noqa: BLE001  anything ONNX Runtime raises rejects the version
        raise ModelRejected(f"version {version}: ONNX Runtime cannot load it: {exc}") from None
    if tmp is not None and cache is not None and tmp.is_file():
        os.replace(tmp, cache)  # complete files only: a crash leaves a .tmp, never half a cache
    return session, False


def _sampler_session(path: Path, options: SessionOptions, version: int) -> Any:
    """A session of the model with the patch sampler in front, or None where its opset is older
    than the sampler's (it is then served on the host path, with a warning)."""
    import onnx
    import onnxruntime as ort

    from cad.models.sampler import opset_of, with_sampler

    proto = onnx.load(str(path))
    if opset_of(proto) < MIN_OPSET:
        log.warning(
            "version %s: ONNX opset %s is older than the patch sampler's (%s); patches are cut "
            "on the host",
            version,
            opset_of(proto),
            MIN_OPSET,
        )
        return None
    try:
        combined = with_sampler(proto).SerializeToString()
        so = ort_session_options(options, options.graph_optimization)
        return ort.InferenceSession(combined, so, providers=list(options.providers))
    except Exception as exc:  # noqa: BLE001  anything ONNX Runtime raises rejects the version
        raise ModelRejected(f"version {version}: the patch sampling graph failed: {exc}") from None


def _check_sampler(model: LoadedModel) -> None:
    """The graph path must give the host path's probabilities on a test image (1e-3)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    box, recipe = Box(-4.0, 6.0, 30.0, 24.0), parse_recipe(model.default_recipe)
    if recipe.vessel:  # a PE model: the image graph is still checked, with a box recipe
        recipe = parse_recipe("polyp")
    host = model.run(extract_patches(image, box, recipe, model.input_size))
    affines = patch_affines(image.shape[0], image.shape[1], box, recipe)
    graph = model.run_images([ImagePatches(image, affines)], recipe.count)
    if host.shape != graph.shape or not np.allclose(host, graph, atol=1e-3):
        raise ModelRejected(
            f"version {model.version}: the patch sampling graph disagrees with the host path "
            f"(largest difference {np.abs(host - graph).max():.2e})"
        )


def load_model(info: VersionInfo, options: SessionOptions) -> LoadedModel:
    """Load and check one registry version: checksum, signature, warm-up with finite outputs.

    Raises:
        ModelRejected: any check failed; the message says which.
    """
    path = info.model_path
    if not path.is_file():
        raise ModelRejected(f"version {info.version}: {path.name} is missing")
    expected = info.manifest.sha256
    actual = sha256_file(path)
    if expected != actual:
        raise ModelRejected(
            f"version {info.version}: checksum mismatch (manifest {expected}, file {actual})"
        )
    if CUDA in options.providers:
        preload_cuda_libraries()
    session, cached = _session(path, actual, options, info.version)
    _check_signature(session)
    on_cuda = session.get_providers()[0] == CUDA
    use_binding = options.io_binding == "on" or (options.io_binding == "auto" and on_cuda)
    use_buckets = options.batch_buckets == "on" or (options.batch_buckets == "auto" and on_cuda)
    buckets = batch_buckets(options.max_batch) if use_buckets else ()
    graph = options.patch_sampling == "graph" or (options.patch_sampling == "auto" and on_cuda)
    sampler = _sampler_session(path, options, info.version) if graph else None
    model = LoadedModel(
        info,
        session,
        io_binding=use_binding,
        optimized_from_cache=cached,
        buckets=buckets,
        sampler=sampler,
    )
    rng = np.random.default_rng(0)
    warm = rng.uniform(0, 255, (2, 3, model.input_size, model.input_size)).astype(np.float32)
    try:
        probs = model.run(warm)
    except Exception as exc:  # noqa: BLE001  anything ONNX Runtime raises rejects the version
        raise ModelRejected(f"version {info.version}: warm-up run failed: {exc}") from None
    if probs.shape != (2, model.num_classes) or not np.all(np.isfinite(probs)):
        raise ModelRejected(f"version {info.version}: warm-up produced non-finite outputs")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or probs.min() < 0:
        raise ModelRejected(f"version {info.version}: outputs are not probabilities")
    if model.samples_on_device:
        try:
            _check_sampler(model)
        except ModelRejected:
            raise
        except Exception as exc:  # noqa: BLE001  anything ONNX Runtime raises rejects the version
            raise ModelRejected(
                f"version {info.version}: the sampling graph failed: {exc}"
            ) from None
    if buckets:
        t0 = time.perf_counter()
        for size in buckets:  # each shape's first-run cost (cuDNN search) is paid here
            try:
                model.run(np.zeros((size, 3, model.input_size, model.input_size), dtype=np.float32))
                if model.samples_on_device:  # its own session: its own first runs
                    tiny = ImagePatches(
                        np.zeros((8, 8, 3), np.uint8), np.zeros((1, 2, 3), np.float32)
                    )
                    model.run_images([tiny], size)
            except Exception as exc:  # noqa: BLE001  any runtime failure rejects the version
                raise ModelRejected(
                    f"version {info.version}: warm-up at batch {size} failed: {exc}"
                ) from None
        log.info(
            "version %s: batch sizes %s warmed up in %.2f s",
            info.version,
            ",".join(map(str, buckets)),
            time.perf_counter() - t0,
        )
    return model


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc ``malloc_trim``), so
    the buffers of a swapped-out ONNX Runtime session do not stay in the resident set. A no-op
    where the C library has no ``malloc_trim``."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: no library search per swap
