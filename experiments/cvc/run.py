"""How much annotation does AIFT save? The paper's experiment on CVC-ClinicDB, with production code.

Every method runs in its own workspace (registry, SQLite label store, image
archive) copied from one template, so all start from the same initial model
and the same classified pool. Each round an oracle answers the queries through
the production review service (the annotation queue ranks by the method's AIFT
variant, or at random), then the production round code (``run_round``)
fine-tunes, publishes and re-scores the pool. The test sequences are archived
once into the template and scored with the published version's network
through the production scoring code (``candidate_probabilities``: the trunk
cache when the preset tunes only the top; parity with the served ONNX model is
checked at every export).

Methods: the AIFT variants, their ACFT-randomised forms (``<variant>_acft``:
sampled from the top ``omega * b`` in proportion to score), IFT Random,
Learning from Scratch (every round trains the initial model on all labels),
the whole-pool reference, and ``random_alexnet``: IFT Random from a randomly
initialised AlexNet, the control that shows why pretraining matters.

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

from cad.aift import (
    BASELINES,
    KEYED,
    RANDOM,
    VARIANTS,
    Box,
    candidate_probability,
    degenerate_variants,
    parse_recipe,
)
from cad.encoded import decode_encoded
from cad.imaging import ImageLimits
from cad.labels.archive import ImageArchive
from cad.labels.ordering import MAX_QUEUE_LIMIT
from cad.labels.recorder import Recorder
from cad.labels.review import ReviewService
from cad.labels.store import open_store
from cad.measures import average_precision, roc_auc
from cad.metrics import ServiceMetrics
from cad.models.batcher import SerialBatcher
from cad.models.inference import (
    CandidateInput,
    Classifier,
    ClassifyInput,
    EncodedImage,
    ModelManager,
)
from cad.models.lifecycle import MemoryTrimListener
from cad.models.providers import SessionOptions
from cad.models.registry import ModelRegistry, VersionInfo
from experiments.cvc import budget as budgeted
from experiments.cvc.budget import BUDGET, budget_of, measure_overlap, window_of
from experiments.cvc.budget import append as append_budget
from experiments.cvc.pool import (
    DEFAULT_ROOT,
    GeneratedCandidate,
    generate,
    generate_pool,
    load_frames,
)
from trainer.bootstrap import init_model
from trainer.data import Example, PatchSource, labels_of
from trainer.device import resolve_device
from trainer.finetune import candidate_probabilities
from trainer.pool import load_net
from trainer.rescore import write_queue_keys
from trainer.round import run_round
from trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

SCRATCH, FULL, CONTROL = "scratch", "full", "random_alexnet"
ACFT = "_acft"
SPREAD = "_spread"
"""A method ending so takes each batch spread over the pool's sources: at most
ceil(batch / sources) of one source (the queue's per-source cap), the next best elsewhere."""
ACFT_OMEGA = 5.0
METHODS = (*VARIANTS, RANDOM, SCRATCH)
CSV_FIELDS = (
    "method",
    "seed",
    "round",
    "labels",
    "test_auc",
    "test_ap",
    "positives",
    "train_loss_first",
    "train_loss",
    "version",
    "seconds",
    "val_auc",
    "val_ap",
)
CANDIDATE_SEED = 20170721  # the generated candidates are the same for every method and seed


def variant_of(method: str) -> tuple[str, float]:
    """The annotation queue's variant and omega for a method (``entropy_acft`` -> entropy, 5;
    ``margin_spread`` -> margin, 0: spread over sources, :func:`spreads`)."""
    if method.endswith(SPREAD):
        return variant_of(method[: -len(SPREAD)])
    if method.endswith(BUDGET):
        return variant_of(method[: -len(BUDGET)])
    if method.endswith(ACFT):
        return method[: -len(ACFT)], ACFT_OMEGA
    if method in (RANDOM, SCRATCH, FULL, CONTROL):
        return RANDOM, 0.0
    return method, 0.0


def known_method(method: str) -> bool:
    return variant_of(method)[0] in (*VARIANTS, RANDOM, *BASELINES)


@dataclass(frozen=True)
class ExperimentPreset:
    name: str
    input_size: int
    recipe: str
    k_negatives: int
    """Random negatives per frame (``ratio`` 0: the old easy pool) ."""
    b: int
    rounds: int
    seeds: tuple[int, ...]
    train_preset: str = "polyp"
    depth: str = "conv1"
    batch_size: int = 64
    architecture: str = "alexnet"
    weights: str | None = None
    """``imagenet``, ``random`` or None (ImageNet where found locally)."""
    ratio: float = 0.0
    """Negatives per polyp of the CAD-like pool (:func:`experiments.cvc.pool.generate_pool`); 0: ``generate``."""
    hard_fraction: float = 0.5
    epochs: int | None = None
    """Epochs of every round (None: Table 3's)."""
    methods: tuple[str, ...] = METHODS
    control_size: int = 64
    """Input size of the random-init AlexNet control."""
    control_rounds: int = 0
    """Rounds of the control (0: ``rounds``); it covers the same labels in fewer, larger rounds
    (each AlexNet round writes ~0.3 GB of model files)."""
    split: str = "split.json"
    """The split file beside this module that the preset runs on unless told otherwise."""
    doubling_cap: int = 0
    """When set, the labels double every round (b, b, 2b, 4b, ... new labels, so 2b, 4b, 8b, ...
    in all) with no round adding more than this, until the pool is exhausted; ``rounds`` (when
    not 0) is then a limit. 0: ``rounds`` rounds of ``b``."""


def label_schedule(b: int, rounds: int, pool_size: int, doubling_cap: int = 0) -> list[int]:
    """The labels in hand after each round (cumulative), the same for every method.

    Fixed: ``rounds`` rounds of ``b``. Doubling (``doubling_cap`` > 0): b, 2b, 4b, ... in all,
    each round adding at most ``doubling_cap``, the last round taking what is left of the pool;
    ``rounds`` > 0 stops it earlier. Never more than the pool."""
    if b < 1 or pool_size < 1:
        raise ValueError(f"a schedule needs b >= 1 and a pool (b={b}, pool={pool_size})")
    if doubling_cap < 0 or (not doubling_cap and rounds < 1):
        raise ValueError("a fixed schedule needs rounds >= 1; a doubling one a cap >= 1")
    if not doubling_cap:
        return [min(pool_size, r * b) for r in range(1, rounds + 1)]
    out = [min(b, pool_size)]
    while out[-1] < pool_size and (not rounds or len(out) < rounds):
        out.append(min(pool_size, out[-1] + min(out[-1], doubling_cap)))
    return out


STUDY_METHODS = (
    RANDOM,
    "scratch",
    "entropy",
    "entropy_alpha",
    "diversity",
    "diversity_alpha",
    "entropy_diversity",
    "entropy_diversity_alpha",
    "entropy_acft",
    "entropy_alpha_acft",
    CONTROL,
)

PEAK_METHODS = (
    RANDOM,
    "scratch",
    "entropy_alpha",
    "entropy_diversity_alpha",
    "entropy_alpha_acft",
    "entropy_diversity_alpha_acft",
)

PRESETS = {
    p.name: p
    for p in (
        # 2 CPU cores, at most 30 minutes: ImageNet SqueezeNet at 112 px, 8 patches (alpha keeps 2),
        # 1 polyp per 10 negatives, half of them hard; only fire9 and the head tuned (trunk cached).
        ExperimentPreset(
            "quick",
            112,
            "polyp-inside:8",
            0,
            10,
            6,
            (0, 1, 2),
            "polyp-squeezenet",
            "fire9",
            128,
            architecture="squeezenet1_0",
            weights="imagenet",
            ratio=10.0,
            control_rounds=3,
            methods=(
                RANDOM,
                "scratch",
                "entropy",
                "entropy_alpha",
                "entropy_diversity_alpha",
                "entropy_acft",
                CONTROL,
            ),
        ),
        # 2 CPU cores, at most 3 hours, resumable round by round: every method, 5 paired seeds.
        ExperimentPreset(
            "standard",
            112,
            "polyp-inside:8",
            0,
            10,
            10,
            (0, 1, 2, 3, 4),
            "polyp-squeezenet",
            "fire9",
            128,
            architecture="squeezenet1_0",
            weights="imagenet",
            ratio=10.0,
            control_rounds=5,
            methods=STUDY_METHODS,
        ),
        # The paper's setting: AlexNet, 227-px patches, 24 per candidate, Table 3 polyp parameters (GPU).
        ExperimentPreset(
            "paper",
            227,
            "polyp",
            3,
            50,
            20,
            (0, 1, 2),
            batch_size=128,
            ratio=10.0,
            methods=(*METHODS, "entropy_acft", "entropy_alpha_acft"),
        ),
        # The paper's measure on 2 CPU cores: labels double each round, 10, 20, 40, ... 640
        # (7 rounds, 28% of the 2,266-candidate pool); 5 paired seeds. The two rounds that would
        # exhaust the pool (1,280 and 2,266 labels) cost about 4.5 min per method and seed on
        # 2 cores, 2.3 h for the run: ``--rounds 9`` adds them.
        ExperimentPreset(
            "peak",
            112,
            "polyp-inside:8",
            0,
            10,
            7,
            (0, 1, 2, 3, 4),
            "polyp-squeezenet",
            "fire9",
            128,
            architecture="squeezenet1_0",
            weights="imagenet",
            ratio=10.0,
            methods=PEAK_METHODS,
            split="split-peak.json",
            doubling_cap=2560,
        ),
    )
}


@dataclass
class Split:
    pool: list[int]
    test: list[int]
    validation: list[int] = field(default_factory=list)
    """Pool sequences held out of the pool to choose methods on (scored every round, never labelled)."""

    @classmethod
    def from_file(cls, path: Path) -> Split:
        data = json.loads(path.read_text())
        return cls(
            [int(s) for s in data["pool"]],
            [int(s) for s in data["test"]],
            [int(s) for s in data.get("validation", [])],
        )

    def check(self) -> None:
        sets = {"pool": self.pool, "test": self.test, "validation": self.validation}
        for a, b in (("pool", "test"), ("pool", "validation"), ("test", "validation")):
            if overlap := set(sets[a]) & set(sets[b]):
                raise ValueError(f"sequences {sorted(overlap)} are in both {a} and {b}")


@dataclass
class Experiment:
    out: Path
    preset: ExperimentPreset
    split: Split
    data_root: Path = DEFAULT_ROOT
    progress: bool = True
    _test: dict[str, list[Example]] = field(default_factory=dict, repr=False)
    _truth: dict[str, list[int]] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ set-up

    @property
    def template(self) -> Path:
        return self.out / "template"

    def template_of(self, method: str) -> Path:
        return self.out / "template-alexnet" if method == CONTROL else self.template

    def _frames(self, sequences: Sequence[int]) -> list:
        wanted = set(sequences)
        return [f for f in load_frames(self.data_root) if f.sequence in wanted]

    def _generate(self, sequences: Sequence[int], seed: int) -> list[GeneratedCandidate]:
        frames = self._frames(sequences)
        if self.preset.ratio > 0:
            return generate_pool(
                frames, seed, self.data_root, self.preset.ratio, self.preset.hard_fraction
            )
        return generate(frames, self.preset.k_negatives, seed)

    def prepare(self, control: bool = False) -> None:
        """Initial model + the pool classified + the test frames archived, into a template (once)."""
        self._prepare(
            self.template, self.preset.architecture, self.preset.weights, self.preset.input_size
        )
        if control:
            self._prepare(
                self.out / "template-alexnet", "alexnet", "random", self.preset.control_size
            )

    def _prepare(
        self, template: Path, architecture: str, weights: str | None, input_size: int
    ) -> None:
        if (template / "ready.json").is_file():
            return
        self.split.check()
        shutil.rmtree(template, ignore_errors=True)
        registry_root = template / "registry"
        info = self._initial(registry_root, architecture, weights, input_size)
        store = open_store(f"sqlite:///{template / 'labels.sqlite3'}")
        metrics = ServiceMetrics(CollectorRegistry())
        models = ModelManager(
            ModelRegistry(registry_root, "cad"),
            SessionOptions(),
            metrics,
            listeners=[MemoryTrimListener()],
        )
        models.refresh()
        classifier = Classifier(
            models,
            metrics,
            ImageLimits(),
            1000,
            SerialBatcher(64, metrics),
            Recorder(store, ImageArchive(template / "archive")),
        )
        pool = self._generate(self.split.pool, CANDIDATE_SEED)
        truth: dict[str, int] = {}
        by_frame: dict[int, list[GeneratedCandidate]] = {}
        for c in pool:
            by_frame.setdefault(c.frame.frame, []).append(c)
        for cands in tqdm(
            by_frame.values(), desc="classifying the pool", unit="frame", disable=not self.progress
        ):
            fr = cands[0].frame
            outcome = classifier.classify(
                ClassifyInput(
                    EncodedImage(fr.path.read_bytes()),
                    fr.frame,
                    [CandidateInput(str(c.label), c.box) for c in cands],
                    recipe=self.preset.recipe,
                    source_id=f"cvc-seq-{fr.sequence}",
                )
            )
            truth.update({r.candidate_id: int(r.client_id) for r in outcome.results})
        store.close()
        # The test (and validation) sequences: archived once (decoded as the server decodes),
        # scored by every method after every round.
        test_archive = ImageArchive(template / "test-archive")
        tests = self._archive(test_archive, self.split.test, CANDIDATE_SEED + 1)
        (template / "test.json").write_text(json.dumps(tests))
        if self.split.validation:
            held = self._archive(test_archive, self.split.validation, CANDIDATE_SEED + 2)
            (template / "validation.json").write_text(json.dumps(held))
        test_archive.close()
        (template / "truth.json").write_text(json.dumps(truth))
        kinds: dict[str, int] = {}
        for c in pool:
            kind = c.kind or ("polyp" if c.label else "random")
            kinds[kind] = kinds.get(kind, 0) + 1
        (template / "ready.json").write_text(
            json.dumps(
                {
                    "preset": asdict(self.preset),
                    "split": asdict(self.split),
                    "pool_candidates": len(truth),
                    "positives": sum(truth.values()),
                    "pool_kinds": kinds,
                    "test_candidates": len(tests),
                    "test_positives": sum(t["label"] for t in tests),
                    "validation_candidates": len(held) if self.split.validation else 0,
                    "architecture": architecture,
                    "pretrained": info.manifest.pretrained.as_dict(),
                },
                indent=2,
            )
        )

    def _initial(
        self, registry_root: Path, architecture: str, weights: str | None, input_size: int
    ) -> VersionInfo:
        """Version 1 of a template's registry, every run's start: the preset's initial weights."""
        return init_model(
            TrainerSettings(
                registry_root=registry_root,
                input_size=input_size,
                recipe=self.preset.recipe,
                architecture=architecture,
                weights=weights,
            )
        )

    def _archive(
        self, archive: ImageArchive, sequences: Sequence[int], seed: int
    ) -> list[dict[str, object]]:
        shas: dict[int, str] = {}
        rows: list[dict[str, object]] = []
        for c in self._generate(sequences, seed):
            if c.frame.frame not in shas:
                shas[c.frame.frame] = archive.put(decode_encoded(c.frame.path.read_bytes()).pixels)[
                    0
                ]
            b = c.box
            rows.append(
                {
                    "sha": shas[c.frame.frame],
                    "box": [b.x, b.y, b.width, b.height],
                    "label": c.label,
                    "kind": c.kind,
                    "sequence": c.frame.sequence,
                }
            )
        return rows

    # ------------------------------------------------------------------ evaluation

    def test_examples(self, template: Path, name: str = "test") -> list[Example]:
        """The held-out candidates of ``name`` (``test`` or ``validation``; none when absent)."""
        key = f"{template}:{name}"
        if key not in self._test:
            path = template / f"{name}.json"
            rows = json.loads(path.read_text()) if path.is_file() else []
            self._test[key] = [
                Example(
                    f"{name}-{i}",
                    r["sha"],
                    Box(*r["box"]),
                    self.preset.recipe,
                    int(r["label"]),
                    f"{name}:{r['sequence']}",
                )
                for i, r in enumerate(rows)
            ]
        return self._test[key]

    def held_out_scores(
        self, registry_root: Path, template: Path, depth: str, names: Sequence[str] = ("test",)
    ) -> tuple[dict[str, tuple[list[int], np.ndarray]], int]:
        """Candidate probabilities of the version servers follow, per held-out set."""
        registry = ModelRegistry(registry_root, "cad")
        version = registry.target()
        if version is None:
            raise RuntimeError(f"no model version in {registry_root} to test")
        info = registry.get(version)
        source = PatchSource(ImageArchive(template / "test-archive"), info.manifest.input_size)
        net = load_net(info).to(resolve_device(TrainerSettings().device))  # CAD_DEVICE, as rounds
        out = {}
        for name in names:
            examples = self.test_examples(template, name)
            if not examples:
                continue
            probs = candidate_probabilities(
                net, examples, source, batch_size=256, progress=False, depth=depth
            )
            out[name] = (labels_of(examples), np.array([candidate_probability(p) for p in probs]))
        return out, version

    def evaluate(
        self, registry_root: Path, template: Path | None = None, depth: str | None = None
    ) -> dict[str, object]:
        """The CSV columns of a round's evaluation: test (and validation) AUC and AP, version."""
        scores, version = self.held_out_scores(
            registry_root,
            template or self.template,
            depth or self.preset.depth,
            ("test", "validation"),
        )
        row: dict[str, object] = {"version": version, "val_auc": "", "val_ap": ""}
        for name, prefix in (("test", "test"), ("validation", "val")):
            if name in scores:
                labels, probs = scores[name]
                row[f"{prefix}_auc"] = f"{roc_auc(labels, probs):.6f}"
                row[f"{prefix}_ap"] = f"{average_precision(labels, probs):.6f}"
        return row

    def test_auc(
        self, registry_root: Path, template: Path | None = None, depth: str | None = None
    ) -> tuple[float, float, int]:
        scores, version = self.held_out_scores(
            registry_root, template or self.template, depth or self.preset.depth
        )
        labels, probs = scores["test"]
        return roc_auc(labels, probs), average_precision(labels, probs), version

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
        fields: Sequence[str] = CSV_FIELDS
        if not new:  # a run begun before a column was added keeps its header
            with path.open() as fh:
                fields = next(csv.reader(fh), []) or CSV_FIELDS
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())

    def _timing(self, method: str, seed: int, r: int, seconds: dict[str, float]) -> None:
        """One line of timings.csv: where a round's time went (queue and labels, training,
        validation, export, re-scoring, baseline keys, held-out evaluation)."""
        path = self.out / "timings.csv"
        steps = ("queue", "train", "validate", "export", "rescore", "queue_keys", "evaluate")
        new = not path.is_file()
        with path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["method", "seed", "round", *[f"{k}_s" for k in steps]])
            writer.writerow([method, seed, r, *[f"{seconds.get(k, 0.0):.1f}" for k in steps]])

    def starting_set(
        self, review: ReviewService, truth: dict[str, int], seed: int, size: int = 0
    ) -> list[str]:
        """Round 1's labels for a seed: the first ``b`` of the pool in a seeded random order,
        with the first polyp in that order swapped in for the last pick if there is none (a
        round needs both classes). Every method of a seed starts from this same set."""
        queue = review.annotation_queue(
            min(len(truth), MAX_QUEUE_LIMIT), RANDOM, seed=seed * 1000 + 1
        )
        order = [entry.candidate_id for entry, _ in queue.items]
        picks = order[: size or self.preset.b]
        if not any(truth[c] for c in picks):
            picks[-1] = next(c for c in order if truth[c])
        return picks

    def typiclust_start(
        self, ws: Path, review: ReviewService, truth: dict[str, int], seed: int, size: int
    ) -> list[str]:
        """Round 1's labels chosen by TypiClust on the initial model's features (the cold start),
        the last swapped for the first polyp in its order if it holds none (a round needs both
        classes), as :meth:`starting_set` does."""
        settings = self._settings(ws, "typiclust", seed, budget=size)
        store = review.store
        registry = ModelRegistry(settings.registry_root, "cad")
        write_queue_keys(
            store, ImageArchive(settings.archive_root), registry, ["typiclust"], settings, False
        )
        queue = review.annotation_queue(min(len(truth), MAX_QUEUE_LIMIT), "typiclust")
        order = [entry.candidate_id for entry, _ in queue.items]
        picks = order[:size]
        if not any(truth[c] for c in picks):
            picks[-1] = next(c for c in order if truth[c])
        return picks

    def schedule(self, method: str, pool_size: int) -> list[int]:
        """Labels in hand after each round of ``method`` (the whole pool at once for ``full``)."""
        p = self.preset
        if method == FULL:
            return [pool_size]
        if method == CONTROL and p.control_rounds and not p.doubling_cap:
            per_round = p.b * p.rounds // p.control_rounds
            return label_schedule(per_round, p.control_rounds, pool_size)
        return label_schedule(p.b, p.rounds, pool_size, p.doubling_cap)

    def depth_of(self, method: str) -> str:
        return "conv1" if method == CONTROL else self.preset.depth

    def _settings(
        self,
        ws: Path,
        method: str,
        seed: int,
        rescore: bool = True,
        budget: int = 100,
        rescore_budget: int = 0,
        rescore_window: int = 0,
    ) -> TrainerSettings:
        return TrainerSettings(
            rescore_budget=rescore_budget,
            rescore_prescreen=budgeted.PRESCREEN if rescore_budget else 0,
            rescore_prescreen_window=rescore_window if rescore_budget else 0,
            queue_keys=variant_of(method)[0] if variant_of(method)[0] in KEYED else "",
            queue_keys_budget=max(1, budget),
            registry_root=ws / "registry",
            store_url=f"sqlite:///{ws / 'labels.sqlite3'}",
            archive_root=ws / "archive",
            depth=self.depth_of(method),
            preset="polyp"
            if method == CONTROL
            else self.preset.train_preset,  # the control: Table 3 as is
            train_batch_size=self.preset.batch_size,
            val_fraction=0.0,
            allow_unvalidated=True,
            seed=seed,
            scratch=method == SCRATCH,
            rescore=rescore,
            epochs=self.preset.epochs,
        )

    def run(self, method: str, seed: int) -> None:
        """All rounds of one method and seed (skipping the rounds already in curves.csv)."""
        if not (known_method(method) or method == FULL):
            raise ValueError(f"unknown method {method!r}; known: {', '.join(STUDY_METHODS)}")
        done = {
            int(r["round"])
            for r in self._rows()
            if r["method"] == method and int(r["seed"]) == seed
        }
        template = self.template_of(method)
        ws = self.out / "runs" / f"{method}-s{seed}"
        if not ws.exists():
            _clone(template, ws)
        truth = json.loads((ws / "truth.json").read_text())
        schedule = self.schedule(method, len(truth))
        rounds = len(schedule)
        depth = self.depth_of(method)
        if 0 not in done and method != FULL:
            self._append(
                {
                    "method": method,
                    "seed": seed,
                    "round": 0,
                    "labels": 0,
                    "positives": 0,
                    "train_loss_first": "",
                    "train_loss": "",
                    "seconds": 0,
                    **self.evaluate(ws / "registry", template, depth),
                }
            )
        variant, omega = variant_of(method)
        for r in tqdm(
            range(1, rounds + 1),
            desc=f"{method} seed {seed}",
            unit="round",
            disable=not self.progress,
            leave=False,
        ):
            if r in done:
                continue
            t0 = time.perf_counter()
            store = open_store(f"sqlite:///{ws / 'labels.sqlite3'}")
            try:
                review = ReviewService(store, ServiceMetrics(CollectorRegistry()))
                if method.endswith(BUDGET):  # as a server with CAD_QUEUE_FRESH_FIRST serves
                    target = ModelRegistry(ws / "registry", "cad").target()
                    review.fresh_version = lambda target=target: str(target)
                have = sum(1 for _ in store.queue.labeled())
                need = schedule[r - 1] - have
                if r == 1 and variant == "typiclust":  # the cold start picks round 1 itself
                    picks = self.typiclust_start(ws, review, truth, seed, schedule[0])
                elif r == 1 and method != FULL:  # the seed's starting labels, every method's
                    picks = self.starting_set(review, truth, seed, schedule[0])
                if r == 1 and method != FULL:
                    for candidate_id in picks:
                        verdict = "TRUE_POSITIVE" if truth[candidate_id] else "FALSE_POSITIVE"
                        review.submit_correction(
                            candidate_id, verdict, "oracle", f"oracle-{candidate_id}"
                        )
                    need = 0
                while need > 0:
                    batch = min(need, 1000)
                    cap = -(-batch // len(self.split.pool)) if method.endswith(SPREAD) else 0
                    queue = review.annotation_queue(
                        batch, variant, seed=seed * 1000 + r, omega=omega, per_source=cap
                    )
                    if not queue.items:
                        break
                    for entry, _ in queue.items:  # the oracle answers from the ground truth
                        verdict = "TRUE_POSITIVE" if truth[entry.candidate_id] else "FALSE_POSITIVE"
                        review.submit_correction(
                            entry.candidate_id, verdict, "oracle", f"oracle-{entry.candidate_id}"
                        )
                    need -= len(queue.items)
                labeled = list(store.queue.labeled())
            finally:
                store.close()
            t_queue = time.perf_counter() - t0
            # Random's next queue reads no scores; the last round has no next queue.
            rescore = variant != RANDOM and r < rounds
            budget = schedule[r] - schedule[r - 1] if r < rounds else 1
            rescore_budget = budget_of(len(truth)) if method.endswith(BUDGET) else 0
            window = window_of(len(truth)) if rescore_budget else 0
            report = run_round(
                self._settings(ws, method, seed, rescore, budget, rescore_budget, window),
                progress=False,
            )
            if rescore_budget and rescore:  # how the budgeted queue's top compares with exact
                budget_row = {"method": method, "seed": seed, "round": r}
                budget_row["rescored"] = report.metrics.get("pool_rescored", 0)
                append_budget(self.out, budget_row | measure_overlap(ws, variant, depth))
            if report.outcome != "published":
                log.info("%s seed %d round %d: %s", method, seed, r, report.reason)
            losses = report.metrics.get("train_loss") or []
            t_eval = time.perf_counter()
            evaluation = self.evaluate(ws / "registry", template, depth)
            self._timing(
                method,
                seed,
                r,
                {**report.timings, "evaluate": time.perf_counter() - t_eval, "queue": t_queue},
            )
            registry = ModelRegistry(ws / "registry", "cad")
            for old in registry.versions():
                if old not in (1, registry.latest()):
                    registry.remove(old)  # keep the initial and the newest: disk stays bounded
            self._append(
                {
                    "method": method,
                    "seed": seed,
                    "round": r,
                    "labels": len(labeled),
                    "positives": sum(1 for x in labeled if x.label == 1),
                    "train_loss_first": f"{losses[0]:.5f}" if losses else "",
                    "train_loss": f"{losses[-1]:.5f}" if losses else "",
                    "seconds": f"{time.perf_counter() - t0:.1f}",
                    **evaluation,
                }
            )


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

    shutil.copytree(
        template, ws, copy_function=link_or_copy, ignore=shutil.ignore_patterns("test-archive")
    )


def run_all(
    exp: Experiment, methods: Sequence[str], seeds: Sequence[int], reference: bool = True
) -> None:
    exp.out.mkdir(parents=True, exist_ok=True)
    variants = [variant_of(m)[0] for m in methods]
    for name, note in degenerate_variants(parse_recipe(exp.preset.recipe).count, variants).items():
        log.warning("%s %s", name, note)
    exp.prepare(control=CONTROL in methods)
    # The whole-pool reference first: every later measure is a share of it.
    jobs = [(FULL, seeds[0])] if reference else []
    jobs += [(m, s) for s in seeds for m in methods if m != CONTROL]
    if CONTROL in methods:
        jobs.append((CONTROL, seeds[0]))  # one seed: the control, not a contender
    for method, seed in tqdm(jobs, desc="experiment", unit="run", disable=not exp.progress):
        exp.run(method, seed)
