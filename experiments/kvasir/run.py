"""The CVC-ClinicDB experiment (:mod:`experiments.cvc.run`) on Kvasir-SEG: the same rounds
(the product's ``run_round``, its export and gate), methods, schedules and reports; only the
images, the split and the candidates are this site's (:mod:`experiments.kvasir.data`).

An image is its own "sequence" (its index in the sorted ids), so a split is a list of image
indices; :func:`kvasir_split` reads ``split.json``'s ids as such.

``start``: a vendor model's folder (:func:`experiments.kvasir.vendor.build_vendor`): version 1
of every run's registry is then that network, as a hospital receives it, instead of the preset's
ImageNet start; the manifest names the file and its SHA-256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cad.models.manifest import parse_manifest
from cad.models.registry import (
    MANIFEST_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    ModelRegistry,
    VersionInfo,
    sha256_file,
)
from experiments.cvc.pool import Frame, GeneratedCandidate
from experiments.cvc.run import Experiment, Split
from experiments.kvasir.data import DEFAULT_ROOT, candidates, load_images, load_split


def kvasir_split(root: Path = DEFAULT_ROOT, path: Path | None = None) -> Split:
    """The kept split as image indices (the experiment's "sequences")."""
    _, ids = load_images(root)
    index = {image: i for i, image in enumerate(ids)}
    split = load_split(path) if path else load_split()
    return Split(
        pool=[index[i] for i in split["pool"]],
        test=[index[i] for i in split["test"]],
        validation=[index[i] for i in split["validation"]],
    )


@dataclass
class KvasirExperiment(Experiment):
    """:class:`~experiments.cvc.run.Experiment` on Kvasir-SEG's images."""

    data_root: Path = DEFAULT_ROOT
    start: Path | None = None
    """A vendor model's folder (model.onnx, weights.pt, manifest.json); None: the preset's."""

    def prepare(self, control: bool = False) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        site = {"site": "Kvasir-SEG", "start": "vendor" if self.start else "imagenet"}
        if self.start and (self.start / "vendor.json").is_file():
            site["vendor"] = json.loads((self.start / "vendor.json").read_text())
        (self.out / "site.json").write_text(json.dumps(site) + "\n")
        super().prepare(control)

    def _initial(
        self, registry_root: Path, architecture: str, weights: str | None, input_size: int
    ) -> VersionInfo:
        if self.start is None or architecture != self.preset.architecture:
            return super()._initial(registry_root, architecture, weights, input_size)
        vendor = parse_manifest(
            json.loads((self.start / MANIFEST_FILE).read_text()), str(self.start)
        )
        if vendor.input_size != input_size or vendor.architecture != architecture:
            raise ValueError(
                f"the vendor model at {self.start} is {vendor.architecture} at "
                f"{vendor.input_size} px; this preset runs {architecture} at {input_size} px"
            )
        manifest = vendor.to_json()
        for key in ("name", "version", "created", "sha256", "files", "metrics"):
            manifest.pop(key, None)
        manifest.update(
            parent_version=None,
            labels={"count": 0, "ids_sha256": None},
            pretrained={
                "source": "file",
                "found": "explicit",
                "path": str(self.start / WEIGHTS_FILE),
                "sha256": sha256_file(self.start / WEIGHTS_FILE),
            },
        )
        files = {MODEL_FILE: self.start / MODEL_FILE, WEIGHTS_FILE: self.start / WEIGHTS_FILE}
        return ModelRegistry(registry_root, "cad").publish(files, manifest)

    def _frames(self, sequences: Sequence[int]) -> list[Frame]:
        wanted = set(sequences)
        frames, _ = load_images(self.data_root)
        return [f for f in frames if f.sequence in wanted]

    def _generate(self, sequences: Sequence[int], seed: int) -> list[GeneratedCandidate]:
        return candidates(self._frames(sequences), seed, self.data_root, self.preset.ratio or 10.0)
