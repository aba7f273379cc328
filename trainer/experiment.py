"""How much annotation does AIFT save? The paper's experiment on CVC-ClinicDB, with production code.

Every method runs in its own workspace (registry, SQLite label store, image
archive) copied from one template, so all start from the same initial model
and the same classified pool. Each round an oracle answers the queries through
the production review service (the annotation queue ranks by the method's AIFT
variant, or at random), then the production round code (``run_round``)
fine-tunes, publishes and re-scores the pool. The test sequences are scored
with the shared patch code and the published ONNX model.

Resumable: each finished round is a CSV row; a rerun skips them and picks up
from the workspace state.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from tqdm import tqdm

from service.aift import VARIANTS, degenerate_variants, parse_recipe
from service.aift.patches import extract_many
from service.archive import ImageArchive
from service.imaging import ImageLimits, decode_encoded
from service.inference import CandidateInput, Classifier, ClassifyInput, EncodedImage, ModelManager
from service.metrics import ServiceMetrics
from service.model import SessionOptions, load_model
from service.registry import ModelRegistry
from service.review import Recorder, ReviewService
from service.store import open_store
from trainer.bootstrap import init_model
from trainer.cvc import DEFAULT_ROOT, GeneratedCandidate, generate, load_frames
from trainer.evaluate import roc_auc
from trainer.round import run_round
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

RANDOM, SCRATCH, FULL = "random", "scratch", "full"
METHODS = (*VARIANTS, RANDOM, SCRATCH)
CSV_FIELDS = ("method", "seed", "round", "labels", "test_auc", "version", "seconds")
CANDIDATE_SEED = 20170721  # the generated candidates are the same for every method and seed


@dataclass(frozen=True)
class ExperimentPreset:
    name: str
    input_size: int
    recipe: str
    k_negatives: int
    b: int
    rounds: int
    seeds: tuple[int, ...]
    train_preset: str = "polyp"
    depth: str = "conv1"
    batch_size: int = 64


PRESETS = {
    p.name: p
    for p in (
        # 2 CPU cores, under 30 minutes: 64-px patches, 4 per candidate, 1 negative per frame, 4 rounds of 10.
        ExperimentPreset("quick", 64, "polyp:4", 1, 10, 4, (0, 1, 2), batch_size=32),
        # The paper's setting: 227-px patches, 24 per candidate, Table 3 polyp parameters (GPU).
        ExperimentPreset("paper", 227, "polyp", 3, 50, 20, (0, 1, 2), batch_size=128),
    )
}


@dataclass
class Split:
    pool: list[int]
    test: list[int]

    @classmethod
    def from_file(cls, path: Path) -> Split:
        data = json.loads(path.read_text())
        return cls([int(s) for s in data["pool"]], [int(s) for s in data["test"]])


@dataclass
class Experiment:
    out: Path
    preset: ExperimentPreset
    split: Split
    data_root: Path = DEFAULT_ROOT
    progress: bool = True
    _test: tuple[list[GeneratedCandidate], np.ndarray | None] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ set-up

    @property
    def template(self) -> Path:
        return self.out / "template"

    def _frames(self, sequences: Sequence[int]) -> list:
        wanted = set(sequences)
        return [f for f in load_frames(self.data_root) if f.sequence in wanted]

    def prepare(self) -> None:
        """Initial model + the pool classified into a template workspace (once)."""
        if (self.template / "ready.json").is_file():
            return
        if overlap := set(self.split.pool) & set(self.split.test):
            raise ValueError(f"sequences {sorted(overlap)} are in both pool and test")
        shutil.rmtree(self.template, ignore_errors=True)
        registry_root = self.template / "registry"
        info = init_model(TrainerSettings(registry_root=registry_root, input_size=self.preset.input_size,
                                          recipe=self.preset.recipe))
        store = open_store(f"sqlite:///{self.template / 'labels.sqlite3'}")
        metrics = ServiceMetrics(CollectorRegistry())
        models = ModelManager(ModelRegistry(registry_root, "cad"), SessionOptions(), metrics)
        models.refresh()
        classifier = Classifier(models, metrics, ImageLimits(), 1000, 64,
                                recorder=Recorder(store, ImageArchive(self.template / "archive")))
        pool = generate(self._frames(self.split.pool), self.preset.k_negatives, CANDIDATE_SEED)
        truth: dict[str, int] = {}
        by_frame: dict[int, list[GeneratedCandidate]] = {}
        for c in pool:
            by_frame.setdefault(c.frame.frame, []).append(c)
        for cands in tqdm(by_frame.values(), desc="classifying the pool", unit="frame", disable=not self.progress):
            fr = cands[0].frame
            outcome = classifier.classify(ClassifyInput(
                EncodedImage(fr.path.read_bytes()), fr.frame,
                [CandidateInput(str(c.label), c.box) for c in cands], self.preset.recipe,
                source_id=f"cvc-seq-{fr.sequence}"))
            truth.update({r.candidate_id: int(r.client_id) for r in outcome.results})
        store.close()
        (self.template / "truth.json").write_text(json.dumps(truth))
        (self.template / "ready.json").write_text(json.dumps({
            "preset": asdict(self.preset), "split": asdict(self.split), "pool_candidates": len(truth),
            "positives": sum(truth.values()), "pretrained": info.manifest["pretrained"]}, indent=2))

    # ------------------------------------------------------------------ evaluation

    def _test_set(self) -> tuple[list[GeneratedCandidate], np.ndarray | None]:
        if self._test is None:
            cands = generate(self._frames(self.split.test), self.preset.k_negatives, CANDIDATE_SEED + 1)
            m = parse_recipe(self.preset.recipe).count
            size = len(cands) * m * 3 * self.preset.input_size**2 * 4
            patches = self._patches(cands) if size < 1 << 30 else None
            self._test = (cands, patches)
        return self._test

    def _patches(self, cands: Sequence[GeneratedCandidate]) -> np.ndarray:
        recipe = parse_recipe(self.preset.recipe)
        chunks = []
        for c in cands:
            pixels = decode_encoded(c.frame.path.read_bytes()).pixels
            chunks.append(extract_many(pixels, [c.box], recipe, self.preset.input_size))
        return np.concatenate(chunks)

    def test_auc(self, registry_root: Path) -> tuple[float, int]:
        registry = ModelRegistry(registry_root, "cad")
        version = registry.target()
        model = load_model(registry.get(version), SessionOptions())  # type: ignore[arg-type]
        cands, cached = self._test_set()
        m = parse_recipe(self.preset.recipe).count
        if cached is not None:
            probs = model.predict(cached, 256)[:, -1].reshape(len(cands), m).mean(axis=1)
        else:
            probs = np.array([model.predict(self._patches([c]), 256)[:, -1].mean() for c in cands])
        return roc_auc([c.label for c in cands], probs), int(version)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ runs

    def _rows(self) -> list[dict[str, str]]:
        path = self.out / "curves.csv"
        if not path.is_file():
            return []
        with path.open() as fh:
            return list(csv.DictReader(fh))

    def _append(self, row: dict[str, object]) -> None:
        path = self.out / "curves.csv"
        new = not path.is_file()
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _settings(self, ws: Path, seed: int, scratch: bool, rescore: bool = True) -> TrainerSettings:
        return TrainerSettings(
            registry_root=ws / "registry", store_url=f"sqlite:///{ws / 'labels.sqlite3'}",
            archive_root=ws / "archive", preset=self.preset.train_preset, depth=self.preset.depth,
            batch_size=self.preset.batch_size, val_fraction=0.0, allow_unvalidated=True, seed=seed,
            scratch=scratch, rescore=rescore,
        )

    def run(self, method: str, seed: int) -> None:
        """All rounds of one method and seed (skipping the rounds already in curves.csv)."""
        if method not in (*METHODS, FULL):
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        done = {int(r["round"]) for r in self._rows() if r["method"] == method and int(r["seed"]) == seed}
        ws = self.out / "runs" / f"{method}-s{seed}"
        if not ws.exists():
            _clone(self.template, ws)
        truth = json.loads((ws / "truth.json").read_text())
        rounds = 1 if method == FULL else self.preset.rounds
        if 0 not in done and method != FULL:
            auc, version = self.test_auc(ws / "registry")
            self._append({"method": method, "seed": seed, "round": 0, "labels": 0, "test_auc": f"{auc:.6f}",
                          "version": version, "seconds": 0})
        for r in tqdm(range(1, rounds + 1), desc=f"{method} seed {seed}", unit="round",
                      disable=not self.progress, leave=False):
            if r in done:
                continue
            t0 = time.perf_counter()
            store = open_store(f"sqlite:///{ws / 'labels.sqlite3'}")
            try:
                review = ReviewService(store, ServiceMetrics(CollectorRegistry()))
                have = sum(1 for _ in store.labeled())
                need = (len(truth) if method == FULL else r * self.preset.b) - have
                variant = RANDOM if method in (RANDOM, SCRATCH, FULL) else method
                while need > 0:
                    queue = review.annotation_queue(min(need, 1000), variant, seed=seed * 1000 + r)
                    if not queue.items:
                        break
                    for entry, _ in queue.items:  # the oracle answers from the ground truth
                        verdict = "TRUE_POSITIVE" if truth[entry.candidate_id] else "FALSE_POSITIVE"
                        review.submit_correction(entry.candidate_id, verdict, "oracle", f"oracle-{entry.candidate_id}")
                    need -= len(queue.items)
                labels = sum(1 for _ in store.labeled())
            finally:
                store.close()
            # Only the AIFT variants' next queue reads the pool's scores; the last round has no next queue.
            rescore = method in VARIANTS and r < rounds
            report = run_round(self._settings(ws, seed, scratch=method == SCRATCH, rescore=rescore),
                               progress=False)
            if report.outcome != "published":
                log.info("%s seed %d round %d: %s", method, seed, r, report.reason)
            auc, version = self.test_auc(ws / "registry")
            registry = ModelRegistry(ws / "registry", "cad")
            for old in registry.versions():
                if old not in (1, registry.latest()):
                    registry.remove(old)  # keep the initial and the newest: disk stays bounded
            self._append({"method": method, "seed": seed, "round": r, "labels": labels,
                          "test_auc": f"{auc:.6f}", "version": version,
                          "seconds": f"{time.perf_counter() - t0:.1f}"})


def _clone(template: Path, ws: Path) -> None:
    """A run workspace: hard links for the immutable files (models, archive), a copy of the store."""
    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith((".sqlite3", ".sqlite3-wal", ".sqlite3-shm")):
            shutil.copy2(src, dst)
        else:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

    shutil.copytree(template, ws, copy_function=link_or_copy)


def run_all(exp: Experiment, methods: Sequence[str], seeds: Sequence[int], reference: bool = True) -> None:
    exp.out.mkdir(parents=True, exist_ok=True)
    for name, note in degenerate_variants(parse_recipe(exp.preset.recipe).count, methods).items():
        log.warning("%s %s", name, note)
    exp.prepare()
    jobs = [(m, s) for s in seeds for m in methods]
    if reference:
        jobs.append((FULL, seeds[0]))
    for method, seed in tqdm(jobs, desc="experiment", unit="run", disable=not exp.progress):
        exp.run(method, seed)
