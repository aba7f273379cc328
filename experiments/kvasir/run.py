"""The CVC-ClinicDB experiment (:mod:`experiments.cvc.run`) on Kvasir-SEG: the same rounds
(the product's ``run_round``, its export and gate), methods, schedules and reports; only the
images, the split and the candidates are this site's (:mod:`experiments.kvasir.data`).

An image is its own "sequence" (its index in the sorted ids), so a split is a list of image
indices; :func:`kvasir_split` reads ``split.json``'s ids as such.

Not yet here (issue 38): rounds that start from a vendor model (the network fine-tuned on all
of CVC-ClinicDB's development sequences) instead of ImageNet weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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

    def prepare(self, control: bool = False) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "site.json").write_text(json.dumps({"site": "Kvasir-SEG"}) + "\n")
        super().prepare(control)

    def _frames(self, sequences: Sequence[int]) -> list[Frame]:
        wanted = set(sequences)
        frames, _ = load_images(self.data_root)
        return [f for f in frames if f.sequence in wanted]

    def _generate(self, sequences: Sequence[int], seed: int) -> list[GeneratedCandidate]:
        return candidates(self._frames(sequences), seed, self.data_root, self.preset.ratio or 10.0)
