"""Trainer settings: ``CAD_*`` environment variables, read once in the command's ``main``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cad.settings import RegistrySettings, StoreSettings


class TrainerSettings(RegistrySettings, StoreSettings):
    """Settings of ``cad model ...`` and ``cad train ...``."""

    model_config = SettingsConfigDict(env_prefix="CAD_", extra="ignore")

    architecture: Literal["alexnet", "squeezenet1_0"] = Field(
        "alexnet", description="init: alexnet or squeezenet1_0 (rounds keep the parent's)."
    )
    pretrained_weights: Path | None = Field(
        None,
        description=(
            "init: an ImageNet state dict (.pth) of the architecture, looked at first. Unset: the "
            "torch hub cache, then the weights shipped with the package (SqueezeNet); nothing is "
            "downloaded unless allow_download."
        ),
    )
    weights: str | None = Field(
        None,
        description="init: imagenet (required), random, or a .pth path; unset: ImageNet where "
        "found locally, else a loud random start.",
    )
    allow_download: bool = Field(
        False, description="init: let torchvision download ImageNet weights."
    )
    input_size: int = Field(224, ge=32, description="Square patch size the network takes.")
    recipe: str = Field("polyp", description="Default patch recipe recorded in the manifest.")
    seed: int = Field(0, description="Seed for random initialisation and training.")
    parity_tolerance: float = Field(
        1e-4, gt=0, description="Max |p_onnx - p_torch| accepted when exporting."
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where rounds train, evaluate and re-score: auto (CUDA when torch sees one, "
        "else cpu), cpu, cuda or cuda:N. Export and its parity check run on the CPU.",
    )
    preset: Literal["polyp", "frames", "pe", "polyp-squeezenet"] = Field(
        "polyp",
        description="Learning parameters: Table 3's polyp, frames or pe, or polyp-squeezenet "
        "(polyp's rates / 100, for SqueezeNet's Caffe-scale activations).",
    )
    depth: str = Field(
        "conv1",
        description="Tuning depth, the lowest trained layer: AlexNet fc8 (head only) ... conv1 "
        "(all); SqueezeNet classifier (head only), fire9 ... fire2, conv1 (all).",
    )
    hq: bool = Field(
        False, description="ACFT HQ set: new labels + labeled candidates the model gets wrong."
    )
    train_batch_size: int = Field(
        64, ge=1, description="Patches per training batch (whole candidates)."
    )
    val_fraction: float = Field(
        0.25, ge=0, lt=1, description="Share of sources held out for validation."
    )
    auc_tolerance: float = Field(
        0.01, description="Publish only if val AUC >= current version's val AUC - tolerance."
    )
    fpr: float = Field(
        0.1, gt=0, lt=1, description="False-positive rate for the reported sensitivity."
    )
    allow_unvalidated: bool = Field(
        False,
        description="Publish when the validation split lacks a class (demo only; never in production).",
    )
    start_version: int | None = Field(
        None,
        description="Fine-tune from this version instead of the serving one (e.g. 1: the original).",
    )
    epochs: int | None = Field(
        None, ge=1, description="Override the preset's epochs (experiments)."
    )
    scratch: bool = Field(
        False,
        description="Learning from scratch: every round trains the initial version (start_version, "
        "default 1) on all labels with the preset's scratch schedule (a baseline, not continuous).",
    )
    actor: str = Field(
        default_factory=lambda: f"trainer@{socket.gethostname()}",
        description="Who publishes, in the audit trail.",
    )
    rescore: bool = Field(
        True,
        description="After the round, re-score the unlabeled pool with the serving version (the "
        "annotation queue ranks by these scores; experiments switch it off where nothing reads them).",
    )
    rescore_budget: int = Field(
        0,
        ge=0,
        description="Candidates a round re-scores at most (0: the whole pool). Half the top of "
        "the queue's ranking, a quarter the newest arrivals, the rest a uniform random sample; "
        "the others keep the scores they had (docs/performance.md).",
    )
    rescore_prescreen: int = Field(
        2,
        ge=0,
        description="With a budget: choose the budget's candidates by a pre-screen of the whole "
        "pool on this many patches a candidate, the budget going to its best (0: choose off the "
        "indexes instead: the top, the newest and a sample, a cost that does not grow with the "
        "pool but a top that is mostly wrong). The pre-screen costs this many over the recipe's "
        "patches of an exact re-scoring; at 2 of 8 it held 0.98 of the exact top 100 "
        "(docs/performance.md).",
    )
    rescore_prescreen_precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="The pre-screen's arithmetic: int8 runs the version's int8 variant (the "
        "published one, else one quantised for the pass on the pool's own patches), faster on a "
        "CPU; the budget is scored in full precision either way (docs/performance.md).",
    )
    rescore_prescreen_window: int = Field(
        0,
        ge=0,
        description="With a pre-screen: screen only this many candidates, chosen off the indexes "
        "(CAD_RESCORE_PRESCREEN_WINDOW_TOP of it the top as served), so a round's "
        "work no longer grows with the pool (0: screen the whole pool). The exact top it keeps "
        "falls as the window becomes a smaller share of the pool (docs/performance.md).",
    )
    rescore_prescreen_window_top: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="The share of a pre-screen's window taken from the top of the ranking as "
        "served (the rest: up to a quarter the newest, then a moving sample). 1 keeps more of "
        "the exact top after an exact re-scoring, but in a loop of windowed rounds it held "
        "0.32 of the exact top 100 against 0.5's 0.48 (docs/performance.md).",
    )
    rescore_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads of a re-scoring (0: one per core). Set 1 where "
        "N workers (cad train rescore --shard I/N) share N cores, or a pod's CPU limit.",
    )
    rescore_order: Literal[
        "entropy",
        "entropy_alpha",
        "diversity",
        "diversity_alpha",
        "entropy_diversity",
        "entropy_diversity_alpha",
        "margin",
    ] = Field(
        "entropy_alpha",  # DEFAULT_VARIANT, the order reviewers get unasked
        description="The ranking whose top a budgeted re-scoring refreshes first: the order "
        "reviewers are served (an AIFT variant or margin).",
    )
    audit_min_labels: int = Field(
        30,
        ge=1,
        description="The gate also holds a new version to its parent's AUC on the audit slice "
        "once the slice has this many settled labels of both classes (fewer: reported only).",
    )
    queue_keys: str = Field(
        "",
        description="Comma-separated keyed baselines (bald, coreset, typiclust) whose queue keys "
        "the trainer writes after each re-scoring, so reviewers can be served in their order; "
        "empty: none (margin needs none).",
    )
    queue_keys_budget: int = Field(
        100,
        ge=1,
        description="The batch Core-Set and TypiClust plan for: about the labels of a round.",
    )
    recipe_override: str = Field(
        "", description="Train on this recipe instead of each candidate's own."
    )
    trunk_cache_mb: float = Field(
        4096,
        gt=0,
        description="Memory for cached activations of frozen trunks (shared by rounds, re-scoring "
        "and experiments).",
    )
    min_new_labels: int = Field(
        20, ge=1, description="watch: run a round once this many new labels exist."
    )
    watch_poll_s: float = Field(60.0, gt=0, description="watch: seconds between label checks.")
    watch_metrics_port: int = Field(
        9465, description="watch: Prometheus port (0 = any free, -1 = off)."
    )


SHARED_ENV = frozenset({"CAD_REGISTRY_ROOT", "CAD_MODEL_NAME", "CAD_STORE_URL", "CAD_ARCHIVE_ROOT"})
"""The environment variables that the server and the trainer both read: the same storage. Every
other trainer setting has a name of its own (``CAD_TRAIN_BATCH_SIZE``, not the server's
``CAD_BATCH_SIZE``), so one ConfigMap can hold both (tests/repo/test_deploy.py checks)."""
