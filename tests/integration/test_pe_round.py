"""A training round on pulmonary embolism labels: a CT series classified by a real server, its
candidates reviewed, and the production round code fine-tuning on them with Table 3's PE
parameters (the patches cut again from the archived voxel blocks)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from cad.models.registry import ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.ctpa import rotation, series_bytes, tube_volume
from support.helpers import make_settings

pytestmark = pytest.mark.slow


def p3(v) -> cad_pb2.Point3D:
    return cad_pb2.Point3D(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def test_a_round_fine_tunes_on_pe_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.bootstrap import init_model
    from trainer.round import run_round
    from trainer.settings import TrainerSettings

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing from a real cache
    root = tmp_path / "registry"
    init_model(
        TrainerSettings(
            registry_root=root,
            input_size=64,
            recipe="pe:9",
            architecture="squeezenet1_0",
            weights="imagenet",
        )
    )
    aff = np.eye(4)
    aff[:3, :3] = rotation([1.0, 2.0, 3.0], 0.4) * np.array([0.7, 0.7, 1.5])
    hu, centre, direction = tube_volume((24, 60, 60), aff, [30, 30, 12], (0.3, -0.5, 0.81))
    series = series_bytes(hu, aff)
    side = np.cross(direction, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    clots = [centre + t * direction for t in (-1.5, 0.0, 1.5)]
    others = [centre + 9 * direction, centre - 9 * direction, centre + 8 * side]
    settings = make_settings(root)
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as channel:
        server.refresh_models()
        stub, review = cad_pb2_grpc.CadInferenceStub(channel), cad_pb2_grpc.CadReviewStub(channel)
        header = cad_pb2.VolumeHeader(
            source_id="ctpa-train",
            candidates=[
                cad_pb2.VolumeCandidate(client_id=f"c{i}", patient_mm=p3(p))
                for i, p in enumerate([*clots, *others, centre + 4 * direction])
            ],
        )
        reply = stub.ClassifyVolume(
            iter([cad_pb2.VolumeChunk(header=header, instances=series)]), timeout=120
        )
        assert reply.recipe == "pe:9"  # the model's own recipe count is not forced: pe:9 asked
        for r in reply.results[:6]:  # the 7th stays unlabeled: the round rescores it
            verdict = (
                cad_pb2.TRUE_POSITIVE
                if r.client_id in ("c0", "c1", "c2")
                else (cad_pb2.FALSE_POSITIVE)
            )
            review.SubmitCorrection(
                cad_pb2.Correction(candidate_id=r.candidate_id, verdict=verdict, reviewer="dr.v"),
                timeout=30,
            )
    report = run_round(
        TrainerSettings(
            registry_root=root,
            store_url=settings.store_url,
            archive_root=settings.archive_root,
            preset="pe",
            depth="fire9",
            val_fraction=0.0,
            allow_unvalidated=True,
            train_batch_size=16,
            seed=1,
        ),
        progress=False,
    )
    assert report.outcome == "published", report.reason
    losses = report.metrics["train_loss"]
    assert len(losses) == 10  # Table 3, pulmonary embolism, first round: 10 epochs
    registry = ModelRegistry(root, "cad")
    manifest = registry.get(registry.latest()).manifest
    assert manifest.training is not None and manifest.training["preset"] == "pe"
    assert manifest.labels.count == 6
    assert manifest.recipe == "pe:9"
    # The unlabeled candidate was scored again by the new version, from its archived block.
    from cad.labels.store import open_store

    store = open_store(settings.store_url)
    try:
        assert store.pool.scored_versions() == {str(registry.latest()): 1}
    finally:
        store.close()
    assert report.metrics["pool_rescored"] == 1
