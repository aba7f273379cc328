"""The model registry on disk (Triton-compatible layout), shared by server and trainer.

Layout::

    <root>/<model>/<version>/model.onnx
    <root>/<model>/<version>/manifest.json
    <root>/<model>/<version>/weights.pt        (torch state dict the trainer continues from)
    <root>/<model>/<version>/variants/<name>/  (int8, fp16: model.onnx + manifest.json)

Versions are positive integers. A version is published by writing every file
into a hidden temporary folder beside the versions, fsyncing files and folder,
and renaming it to its number: a reader sees a whole version or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cad.clock import utc_now
from cad.durable import fsync_path, write_atomic
from cad.models.manifest import (
    Manifest,
    ManifestError,
    overlay,
    parse_manifest,
    parse_variant,
)

MODEL_FILE = "model.onnx"
PIN_FILE = "pinned.json"
VARIANTS_DIR = "variants"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.pt"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class VersionInfo:
    version: int
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


class PinBackend(Protocol):
    """Where a registry's pin lives (:class:`cad.labels.store.sql.StorePins`)."""

    def pinned(self) -> int | None: ...

    def pin(self, version: int, actor: str, reason: str) -> None: ...

    def unpin(self, actor: str = "") -> bool: ...


class ModelRegistry:
    """Versions of one model under ``root/name``."""

    def __init__(self, root: Path, name: str, pins: PinBackend | None = None) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid model name {name!r}")
        self.root = Path(root)
        self.name = name
        self.model_dir = self.root / name
        self.pins = pins
        """Where the pin is kept: the label store (servers, and the CLI and trainer given a
        store), else ``pinned.json`` in the registry."""

    def with_pins_in(self, store: Any, cache: Path | None = None) -> ModelRegistry:
        """This registry with its pin kept in ``store`` (a label store, which builds the pin
        store: the registry imports no store); ``cache``: a local file remembering the last pin
        read, for outages of the store."""
        self.pins = store.pins_for(self.name, self.file_pinned, cache)
        return self

    def versions(self) -> list[int]:
        """Published versions, ascending (folders named by a number with a manifest)."""
        if not self.model_dir.is_dir():
            return []
        found = []
        for entry in self.model_dir.iterdir():
            if entry.name.isdigit() and (entry / MANIFEST_FILE).is_file():
                found.append(int(entry.name))
        return sorted(found)

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def version_dir(self, version: int) -> Path:
        return self.model_dir / str(version)

    def get(self, version: int) -> VersionInfo:
        """Read a version's manifest.

        Raises:
            FileNotFoundError: no such version.
            ManifestError: the manifest is not valid JSON or not a valid manifest (names the file).
        """
        path = self.version_dir(version)
        return VersionInfo(version, path, _read_manifest(path / MANIFEST_FILE, parse_manifest))

    def fingerprint(self, version: int) -> tuple[tuple[str, int, int], ...]:
        """(path, size, mtime) of every file of a version, variants included: what a server
        compares to retry a refused version whose files were replaced."""
        root = self.version_dir(version)
        found = []
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                found.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
        return tuple(found)

    def pinned(self) -> int | None:
        """The pinned version (rollback), or None to follow the newest version."""
        if self.pins is not None:
            return self.pins.pinned()
        return self.file_pinned()

    def file_pinned(self) -> int | None:
        """The pin of ``pinned.json`` (a registry without a pin store)."""
        path = self.model_dir / PIN_FILE
        if not path.is_file():
            return None
        return int(json.loads(path.read_text())["version"])

    def pin(self, version: int, actor: str = "", reason: str = "") -> None:
        """Pin (roll back or forward to) a published version; servers follow it on their next poll.

        Raises:
            FileNotFoundError: no such version.
        """
        if version not in self.versions():
            raise FileNotFoundError(
                f"{self.name} has no version {version}; versions: {self.versions()}"
            )
        if self.pins is not None:
            self.pins.pin(version, actor, reason)
            return
        body = {"version": version, "actor": actor, "reason": reason, "pinned": utc_now()}
        write_atomic(self.model_dir / PIN_FILE, (json.dumps(body, indent=2) + "\n").encode())

    def unpin(self, actor: str = "") -> bool:
        """Follow the newest version again. False if nothing was pinned."""
        if self.pins is not None:
            return self.pins.unpin(actor)
        path = self.model_dir / PIN_FILE
        if not path.exists():
            return False
        path.unlink()
        fsync_path(self.model_dir)
        return True

    def remove(self, version: int) -> None:
        """Delete a version that is neither pinned nor the newest (experiments keep disk bounded)."""
        if version == self.pinned() or version == self.latest():
            raise ValueError(f"version {version} is pinned or the newest; it cannot be removed")
        doomed = self.model_dir / f".removing-{version}-{uuid.uuid4().hex}"
        os.rename(self.version_dir(version), doomed)  # atomic: readers never see half a version
        shutil.rmtree(doomed)

    def publish_variant(
        self, version: int, variant: str, model: Path, manifest: Mapping[str, Any]
    ) -> VersionInfo:
        """Atomically add a variant (``int8``, ``fp16``) of a published version: its own model.onnx and
        manifest under ``<version>/variants/<variant>/``. Variants are immutable like versions.

        Raises:
            FileNotFoundError: no such version. FileExistsError: the variant exists.
        """
        if version not in self.versions():
            raise FileNotFoundError(f"{self.name} has no version {version}")
        if not variant.isidentifier():
            raise ValueError(f"invalid variant name {variant!r}")
        parent = self.version_dir(version) / VARIANTS_DIR
        target = parent / variant
        if target.exists():
            raise FileExistsError(f"version {version} already has a variant {variant!r}")
        parent.mkdir(exist_ok=True)
        staging = parent / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            shutil.copyfile(model, staging / MODEL_FILE)
            fsync_path(staging / MODEL_FILE)
            full = {
                **manifest,
                "variant": variant,
                "variant_of": version,
                "created": utc_now(),
                "sha256": sha256_file(staging / MODEL_FILE),
            }
            parse_variant(full, f"the {variant} manifest for version {version}")
            write_atomic(
                staging / MANIFEST_FILE,
                (json.dumps(full, indent=2, sort_keys=True) + "\n").encode(),
            )
            fsync_path(staging)
            os.rename(staging, target)
            fsync_path(parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self.variant(version, variant)  # type: ignore[return-value]

    def variant(self, version: int, variant: str) -> VersionInfo | None:
        """A version's variant as a loadable VersionInfo (the version's manifest overlaid with the
        variant's: its own checksum), or None if it has none."""
        path = self.version_dir(version) / VARIANTS_DIR / variant
        if not (path / MANIFEST_FILE).is_file():
            return None
        own = _read_manifest(path / MANIFEST_FILE, parse_variant)
        return VersionInfo(version, path, overlay(self.get(version).manifest, own))

    def target(self) -> int | None:
        """The version servers should serve: the pinned one, else the newest."""
        return self.pinned() or self.latest()

    def publish(self, files: Mapping[str, Path], manifest: Mapping[str, Any]) -> VersionInfo:
        """Atomically publish a new version holding ``files`` (name in version dir -> source).

        ``model.onnx`` is required. The manifest gets ``name``, ``version``,
        ``created``, ``sha256`` (of model.onnx) and ``files`` (sha256 of each)
        filled in, and is checked as :class:`Manifest` before anything is written.
        Returns the published version.

        Raises:
            ManifestError: the fields do not make a valid manifest.
        """
        if MODEL_FILE not in files:
            raise ValueError(f"a version needs {MODEL_FILE}")
        draft = {"name": self.name, "version": 0, "created": "", "sha256": "", "files": {}}
        parse_manifest({**manifest, **draft}, f"the manifest to publish as {self.name}")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = self.model_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            hashes = {}
            for name, source in files.items():
                target = staging / name
                shutil.copyfile(source, target)
                fsync_path(target)
                hashes[name] = sha256_file(target)
            while True:
                version = (self.latest() or 0) + 1
                full = {
                    **manifest,
                    "name": self.name,
                    "version": version,
                    "created": manifest.get("created") or utc_now(),
                    "sha256": hashes[MODEL_FILE],
                    "files": hashes,
                }
                typed = parse_manifest(full, f"{self.name} version {version}")
                manifest_path = staging / MANIFEST_FILE
                text = json.dumps(typed.to_json(), indent=2, sort_keys=True)
                manifest_path.write_text(text + "\n")
                fsync_path(manifest_path)
                fsync_path(staging)
                try:
                    os.rename(staging, self.version_dir(version))
                except OSError:
                    if self.version_dir(version).exists():
                        continue  # another publisher took this number; take the next
                    raise
                fsync_path(self.model_dir)
                return VersionInfo(version, self.version_dir(version), typed)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def plan_prune(
    registry: ModelRegistry, keep: int, served: Mapping[int, str]
) -> tuple[list[int], dict[int, str]]:
    """Which versions ``cad model prune --keep N`` removes: all but the newest ``keep``, never
    the pinned one, the followed one (pinned, else newest) or one a replica serves (``served``:
    version -> who). Returns (to remove, oldest first; why each other version stays)."""
    if keep < 1:
        raise ValueError("--keep must be at least 1: the newest version is always kept")
    versions = registry.versions()
    pinned = registry.pinned()
    why: dict[int, str] = {}
    for v in versions[-keep:]:
        why[v] = "among the newest kept"
    if versions:
        why[versions[-1]] = "newest (followed when nothing is pinned)"
    if pinned is not None:
        why[pinned] = "pinned (followed)"
    for v, who in served.items():
        why.setdefault(v, f"served by {who}")
    return [v for v in versions if v not in why], why


def _read_manifest(path: Path, parse: Any) -> Any:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    return parse(data, path)
