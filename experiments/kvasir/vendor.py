"""The vendor model: what a hospital receives on day one.

The network fine-tuned on every labelled candidate of CVC-ClinicDB's development sequences (the
peak split's pool and validation sequences; its test sequences stay out, so the vendor's own
held-out AUC is measured on them), with the peak preset's network, patches and training. Built
by the CVC experiment's whole-pool method (``full``) and kept as a folder of the files a
registry version holds, with ``vendor.json`` saying what it was trained on and how it scored.

A new site's runs then start from it (:class:`~experiments.kvasir.run.KvasirExperiment` with
``start``): version 1 of their registry is the vendor model, its manifest naming the file.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from cad.models.registry import MANIFEST_FILE, MODEL_FILE, WEIGHTS_FILE, ModelRegistry
from experiments.cvc.pool import DEFAULT_ROOT as CVC_ROOT
from experiments.cvc.run import FULL, PRESETS, Experiment, Split, run_all

CVC_SPLIT = Path(__file__).resolve().parents[1] / "cvc" / "split-peak.json"
VENDOR_FILE = "vendor.json"


def development_split(path: Path = CVC_SPLIT) -> Split:
    """CVC-ClinicDB's development sequences (pool and validation) as one pool; test as is."""
    split = Split.from_file(path)
    return Split(pool=sorted(split.pool + split.validation), test=list(split.test), validation=[])


def build_vendor(out: Path, data_root: Path = CVC_ROOT, seed: int = 0) -> Path:
    """Fine-tune the vendor model (resumable: a finished run is reused) and copy it to
    ``out/model``; returns that folder."""
    target = out / "model"
    if (target / VENDOR_FILE).is_file():
        return target
    split = development_split()
    exp = Experiment(out / "cvc", PRESETS["peak"], split, data_root)
    run_all(exp, [], [seed], reference=True)
    registry = ModelRegistry(exp.out / "runs" / f"{FULL}-s{seed}" / "registry", "cad")
    latest = registry.latest()
    if latest is None:
        raise RuntimeError(f"the vendor run published no model in {registry.model_dir}")
    info = registry.get(latest)
    with (exp.out / "curves.csv").open() as fh:
        row = next(r for r in csv.DictReader(fh) if r["method"] == FULL)
    ready = json.loads((exp.template / "ready.json").read_text())
    staging = out / ".model-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (MODEL_FILE, WEIGHTS_FILE, MANIFEST_FILE):
        shutil.copyfile(info.path / name, staging / name)
    (staging / VENDOR_FILE).write_text(
        json.dumps(
            {
                "trained_on": "CVC-ClinicDB development sequences (peak split pool + validation)",
                "sequences": split.pool,
                "labels": int(row["labels"]),
                "positives": int(row["positives"]),
                "preset": "peak",
                "pretrained": ready["pretrained"],
                "cvc_test_sequences": split.test,
                "cvc_test_auc": float(row["test_auc"]),
                "cvc_test_ap": float(row["test_ap"]),
                "sha256": info.manifest.sha256,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
