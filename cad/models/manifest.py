"""The typed manifest of a model version, parsed and checked once when the registry reads it.

A manifest is JSON on disk (``<version>/manifest.json``). :func:`parse_manifest` turns it into a
frozen :class:`Manifest`; a missing required field, a field nobody knows or a value of the wrong
type is a :class:`ManifestError` naming the file and the field. Code reads attributes, never keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

CLASSES = ("background", "finding")


class ManifestError(ValueError):
    """A manifest that is not valid JSON, lacks a required field, has an unknown one or a bad value."""


@dataclass(frozen=True)
class Pretrained:
    """Where a model's initial weights came from (every manifest records it)."""

    source: str
    """``imagenet``, ``file`` (an explicit file of unknown training) or ``random-init``."""
    found: str = ""
    """``explicit``, ``hub-cache``, ``shipped`` or ``download`` (how an ``imagenet`` file was found)."""
    path: str = ""
    sha256: str = ""
    licence: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v or k == "source"}


@dataclass(frozen=True)
class ExportCheck:
    """The ONNX export and its parity check against torch."""

    opset: int
    parity_max_abs_diff: float
    parity_patches: int
    torch: str
    fc6_fold: int | None = None


@dataclass(frozen=True)
class LabelSet:
    """The labels a version was trained on (none for an initial model)."""

    count: int = 0
    ids_sha256: str | None = None
    until: str = ""
    train: int | None = None
    val: int | None = None
    trained_on: int | None = None


@dataclass(frozen=True)
class Quantization:
    """How a reduced-precision variant (int8 or fp16) was made and what it costs in AUC on the
    evaluation candidates (``auc_drop``: fp32's AUC minus the variant's, what servers gate on)."""

    precision: str
    auc_fp32: float
    auc_drop: float
    eval_candidates: int
    auc_int8: float | None = None
    auc_fp16: float | None = None
    calibration_patches: int = 0
    scheme: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """One version's manifest (or a variant's: the version's overlaid with the variant's own)."""

    name: str
    version: int
    created: str
    sha256: str
    files: Mapping[str, str]
    input_size: int
    pretrained: Pretrained
    parent_version: int | None = None
    architecture: str = "alexnet"
    classes: tuple[str, ...] = CLASSES
    input_name: str = "patches"
    output_name: str = "probabilities"
    recipe: str = "polyp"
    seed: int | None = None
    export: ExportCheck | None = None
    labels: LabelSet = field(default_factory=LabelSet)
    training: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    gate: str | None = None
    variant: str = "fp32"
    variant_of: int | None = None
    quantization: Quantization | None = None

    @property
    def val_auc(self) -> float | None:
        value = self.metrics.get("val_auc")
        return None if value is None else float(value)

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to disk (``None`` fields left out)."""
        return _to_json(self)


@dataclass(frozen=True)
class VariantManifest:
    """What a variant folder's own manifest holds; :meth:`Manifest` overlays it on its version."""

    variant: str
    variant_of: int
    created: str
    sha256: str
    quantization: Quantization | None = None


def parse_manifest(data: object, where: Path | str) -> Manifest:
    """Check and type a version's manifest; ``where`` names the file in every error."""
    return _build(Manifest, data, str(where))


def parse_variant(data: object, where: Path | str) -> VariantManifest:
    return _build(VariantManifest, data, str(where))


def overlay(base: Manifest, own: VariantManifest) -> Manifest:
    """A variant as a loadable manifest: the version's, with the variant's checksum and facts."""
    return dataclasses.replace(
        base,
        variant=own.variant,
        variant_of=own.variant_of,
        created=own.created,
        sha256=own.sha256,
        files={"model.onnx": own.sha256},
        quantization=own.quantization,
    )


def _to_json(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, Pretrained):
            return value.as_dict()
        return {
            f.name: _to_json(getattr(value, f.name))
            for f in fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    return value


def _build(cls: type, data: object, where: str, path: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ManifestError(
            f"{where}: {path or 'the manifest'} must be an object, not {data!r:.80}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ManifestError(f"{where}: unknown field '{path}{unknown[0]}'")
    values = {}
    for name, f in known.items():
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise ManifestError(f"{where}: missing required field '{path}{name}'")
            continue
        values[name] = _value(hints[name], data[name], where, f"{path}{name}")
    return cls(**values)


def _value(hint: Any, value: object, where: str, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _value(inner, value, where, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where, f"{path}.")
    if hint is Any:
        return value
    bad = ManifestError(f"{where}: field {path!r} has a bad value {value!r:.80}")
    if origin is tuple:
        (inner, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad
        return tuple(_value(inner, v, where, path) for v in value)
    if origin in (Mapping, dict):
        key_type, inner = typing.get_args(hint)
        if not isinstance(value, Mapping) or not all(isinstance(k, key_type) for k in value):
            raise bad
        return types.MappingProxyType(
            {k: _value(inner, v, where, f"{path}.{k}") for k, v in value.items()}
        )
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is int and isinstance(value, bool):
        raise bad
    if not isinstance(value, hint):
        raise bad
    return value
