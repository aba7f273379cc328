"""AIFT rounds on real DICOM images classified by a real server: continuous fine-tuning,
evaluation, the publish gate, pool re-scoring, presets, the split, watch mode."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from cad.errors import LeaseHeld
from cad.labels.archive import ImageArchive
from cad.labels.store import SqlLabelStore, open_store
from cad.labels.store.leases import holder_name
from cad.measures import auc_ci, roc_auc, sensitivity_at_fpr
from cad.models.registry import WEIGHTS_FILE, ModelRegistry
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.server import ServerThread
from support.helpers import dicom_bytes, make_settings
from trainer.bootstrap import init_model
from trainer.data import balanced_epoch, split_of
from trainer.finetune import param_groups
from trainer.network import CadNet
from trainer.presets import PRESETS, Schedule
from trainer.round import ROUNDS_FILE, TRAINER_LEASE, run_round
from trainer.settings import TrainerSettings
from trainer.watch import TrainerMetrics, Watcher

FILES = [
    "CT_small.dcm",
    "693_UNCR.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "SC_rgb.dcm",
    "OBXXXX1A.dcm",
    "examples_ybr_color.dcm",
    "emri_small.dcm",
    "image_dfl.dcm",
]


@dataclass
class World:
    root: Path
    store_url: str
    archive: Path
    unlabeled: int

    def settings(self, **kw: object) -> TrainerSettings:
        values = dict(
            registry_root=self.root,
            store_url=self.store_url,
            archive_root=self.archive,
            val_fraction=0.4,
            auc_tolerance=1.0,
            train_batch_size=32,
            seed=1,
        )
        values.update(kw)
        return TrainerSettings(**values)  # type: ignore[arg-type]


def _world(tmp: Path) -> World:
    root = tmp / "registry"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp / "torch-home"))
        init_model(TrainerSettings(registry_root=root, input_size=64, recipe="polyp:4"))
    settings = make_settings(root)
    unlabeled = 0
    with ServerThread(settings) as server, grpc.insecure_channel(server.address) as ch:
        server.refresh_models()
        stub, review = cad_pb2_grpc.CadInferenceStub(ch), cad_pb2_grpc.CadReviewStub(ch)
        for name in FILES:
            r = stub.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=dicom_bytes(name),
                    candidates=[
                        cad_pb2.Candidate(
                            client_id="a", box=cad_pb2.Box(x=0, y=0, width=10, height=10)
                        ),
                        cad_pb2.Candidate(
                            client_id="b", box=cad_pb2.Box(x=20, y=20, width=30, height=30)
                        ),
                        cad_pb2.Candidate(
                            client_id="c", box=cad_pb2.Box(x=2, y=30, width=12, height=12)
                        ),
                        cad_pb2.Candidate(
                            client_id="d", box=cad_pb2.Box(x=30, y=5, width=25, height=25)
                        ),
                        cad_pb2.Candidate(
                            client_id="e", box=cad_pb2.Box(x=10, y=10, width=20, height=20)
                        ),
                    ],
                ),
                timeout=60,
            )
            for res in r.results[:4]:
                verdict = cad_pb2.TRUE_POSITIVE if res.client_id in "bd" else cad_pb2.FALSE_POSITIVE
                review.SubmitCorrection(
                    cad_pb2.Correction(
                        candidate_id=res.candidate_id, verdict=verdict, reviewer="dr.t"
                    ),
                    timeout=30,
                )
            unlabeled += 1
    return World(root, settings.store_url, settings.archive_root, unlabeled)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("trainer")
    yield _world(tmp)
    shutil.rmtree(tmp, ignore_errors=True)  # every round publishes ~0.5 GB


def test_split_is_decided_once_per_source() -> None:
    keys = [f"study:{i}" for i in range(2000)]
    first = [split_of(k, 0.25) for k in keys]
    assert first == [split_of(k, 0.25) for k in reversed(keys)][::-1]
    assert 0.2 < first.count("val") / len(keys) < 0.3


@pytest.mark.slow
def test_world_has_sources_on_both_sides(world: World) -> None:
    from trainer.data import labeled_examples

    store = open_store(world.store_url)
    sides = {split_of(e.source_key, 0.4) for e in labeled_examples(store)}
    store.close()
    assert sides == {"train", "val"}


@pytest.mark.slow
def test_first_round_publishes_a_child_and_rescores_the_pool(world: World) -> None:
    report = run_round(world.settings(), progress=False)
    assert report.outcome == "published", report.reason
    registry = ModelRegistry(world.root, "cad")
    m = registry.get(report.version).manifest  # type: ignore[arg-type]
    assert m.parent_version == 1 and m.training["round"] == "first"
    assert m.labels.count == 32 and len(m.labels.ids_sha256) == 64
    assert m.training["schedule"] == {
        "momentum": 0.9,
        "lr": 1e-3,
        "lr_last": 1e-2,
        "gamma": 0.95,
        "epochs": 5,
    }
    assert m.metrics["val_auc"] is not None and 0 <= m.metrics["val_auc"] <= 1
    assert m.metrics["val"]["auc_low"] <= m.metrics["val_auc"] <= m.metrics["val"]["auc_high"]
    assert m.export.parity_max_abs_diff <= 1e-4 and m.recipe == "polyp:4"
    assert m.export.fc6_fold == 36  # 64 px: fc6 applied to the 1x1 map, not its 36 copies
    assert (m.training["device"], m.training["precision"]) == ("cpu", "fp32")  # no CUDA here
    store = open_store(world.store_url)
    assert store.pool.scored_versions() == {str(report.version): world.unlabeled}  # queue refreshed
    store.close()
    lines = (registry.model_dir / ROUNDS_FILE).read_text().splitlines()
    assert json.loads(lines[-1])["outcome"] == "published"


@pytest.mark.slow
def test_later_round_continues_from_the_previous_version(world: World) -> None:
    registry = ModelRegistry(world.root, "cad")
    parent = registry.latest()
    report = run_round(world.settings(depth="fc8", seed=2), progress=False)
    assert report.outcome == "published" and report.parent_version == parent
    child = registry.get(report.version).manifest  # type: ignore[arg-type]
    assert child.training["round"] == "later" and child.training["schedule"]["lr"] == 1e-4
    load = lambda v: torch.load(registry.get(v).path / WEIGHTS_FILE, weights_only=True)  # noqa: E731
    before, after, original = load(parent), load(report.version), load(1)
    # fc8-only tuning: everything below fc8 is exactly the parent's (continuous), not v1's.
    assert torch.equal(after["backbone.features.0.weight"], before["backbone.features.0.weight"])
    assert not torch.equal(
        after["backbone.features.0.weight"], original["backbone.features.0.weight"]
    )
    assert not torch.equal(
        after["backbone.classifier.6.weight"], before["backbone.classifier.6.weight"]
    )


@pytest.mark.slow
def test_round_without_rescore_leaves_the_pool_scores_alone(world: World) -> None:
    store = open_store(world.store_url)
    before = store.pool.scored_versions()
    store.close()
    report = run_round(world.settings(depth="fc8", rescore=False), progress=False)
    assert report.outcome == "published" and "pool_rescored" not in report.metrics
    store = open_store(world.store_url)
    assert store.pool.scored_versions() == before  # still scored by the version before this round
    store.close()


@pytest.mark.slow
def test_a_round_whose_lease_was_taken_meanwhile_publishes_nothing(world: World) -> None:
    """A database failover takes the trainer's advisory lock with the old primary; another
    trainer may take the lease on the new one while this round fine-tunes. The round checks its
    lease again just before publishing: refused, it publishes nothing (bench/failover.py
    --replicated shows the refusal on a real failover)."""
    from cad.errors import LeaseHeld
    from cad.models.registry import ModelRegistry

    class TakenMeanwhile:
        """Ours at the round's start; another trainer's by its end."""

        checks = 0

        def ensure(self) -> None:
            self.checks += 1
            if self.checks > 1:
                raise LeaseHeld("the trainer lease is held by cad train watch on trainer-b")

    settings = world.settings(depth="fc8", rescore=False)
    before = ModelRegistry(settings.registry_root, "cad").versions()
    lease = TakenMeanwhile()
    with pytest.raises(LeaseHeld, match="trainer-b"):
        run_round(settings, progress=False, lease=lease)  # type: ignore[arg-type]
    assert lease.checks == 2  # at the start, and before the publish
    assert ModelRegistry(settings.registry_root, "cad").versions() == before


def test_decoded_image_cache_returns_the_archived_pixels(world: World, tmp_path: Path) -> None:
    from cad.labels.archive import ImageArchive
    from trainer.data import cached_image, labeled_examples

    store = open_store(world.store_url)
    sha = labeled_examples(store)[0].image_sha256
    store.close()
    archive = ImageArchive(world.archive)
    first, again = cached_image(archive, sha), cached_image(archive, sha)
    assert again is first and not first.flags.writeable  # served from the cache, cannot be mutated
    assert np.array_equal(first, archive.get(sha))
    with pytest.raises(FileNotFoundError):  # an archive without the blob fails even when cached
        cached_image(ImageArchive(tmp_path / "empty"), sha)


@pytest.mark.slow
def test_gate_rejects_a_worse_model_and_records_why(world: World) -> None:
    registry = ModelRegistry(world.root, "cad")
    versions = registry.versions()
    report = run_round(world.settings(auc_tolerance=-2.0), progress=False)  # demand +2 AUC
    assert report.outcome == "rejected" and "below the current" in report.reason
    assert registry.versions() == versions
    assert (
        json.loads((registry.model_dir / ROUNDS_FILE).read_text().splitlines()[-1])["outcome"]
        == "rejected"
    )


@pytest.mark.slow
def test_failed_export_check_is_never_published(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exported graph that disagrees with torch on purpose (its 2-way head bias moved by
    +-4 logits after export) fails the real parity check at the default 1e-4 on any processor."""
    import onnx
    from onnx import numpy_helper

    import trainer.export as export

    real_export = export.export_onnx

    def export_then_corrupt(net: torch.nn.Module, path: Path, input_size: int) -> int:
        fold = real_export(net, path, input_size)
        model = onnx.load(str(path))
        heads = [t for t in model.graph.initializer if tuple(t.dims) == (2,)]
        assert len(heads) == 1, "expected exactly one 2-way head bias in the graph"
        bias = numpy_helper.to_array(heads[0]) + np.array([4.0, -4.0], dtype=np.float32)
        heads[0].CopyFrom(numpy_helper.from_array(bias, heads[0].name))
        onnx.save(model, str(path))
        return fold

    monkeypatch.setattr(export, "export_onnx", export_then_corrupt)
    registry = ModelRegistry(world.root, "cad")
    versions = registry.versions()
    report = run_round(world.settings(), progress=False)
    assert report.outcome == "rejected" and "export check failed" in report.reason
    assert registry.versions() == versions


@pytest.mark.slow
def test_unscorable_validation_is_refused_unless_allowed(world: World) -> None:
    registry = ModelRegistry(world.root, "cad")
    versions = registry.versions()
    report = run_round(world.settings(val_fraction=0.0), progress=False)
    assert report.outcome == "rejected" and "validation split cannot be scored" in report.reason
    assert registry.versions() == versions


@pytest.mark.slow
def test_watch_runs_a_round_when_enough_labels_arrive(world: World) -> None:
    metrics = TrainerMetrics(__import__("prometheus_client").CollectorRegistry())
    assert (
        Watcher(world.settings(min_new_labels=1000), metrics, attempted=frozenset()).step() is None
    )  # 32 < 1000
    # a watcher that has attempted nothing yet sees all 32 labels as new
    watcher = Watcher(
        world.settings(min_new_labels=1, auc_tolerance=1.0), metrics, attempted=frozenset()
    )
    assert watcher.run(threading.Event(), max_rounds=1) == 1
    r = metrics.registry
    assert r.get_sample_value("cad_trainer_rounds_total", {"outcome": "published"}) == 1
    assert r.get_sample_value("cad_trainer_labels_used") == 32
    assert r.get_sample_value("cad_trainer_round_duration_seconds_count") == 1
    assert r.get_sample_value("cad_trainer_new_labels") == 0


@pytest.mark.slow
def test_watch_does_not_retrain_on_the_labels_of_a_rejected_round(tmp_path: Path) -> None:
    """The real watcher through a rejection, on a world of its own whose serving version (v1)
    was trained on none of the 32 labels: the same labels never start a second round, in the
    same process or after a restart; only new labels would."""
    world = _world(tmp_path)
    registry = ModelRegistry(world.root, "cad")
    rounds = registry.model_dir / ROUNDS_FILE
    metrics = TrainerMetrics(__import__("prometheus_client").CollectorRegistry())
    settings = world.settings(
        min_new_labels=1, auc_tolerance=-2.0
    )  # demand +2 AUC: always rejected
    watcher = Watcher(settings, metrics)
    assert watcher.new_labels() == 32 and not rounds.exists()
    report = watcher.step()
    assert report is not None and report.outcome == "rejected"
    recorded = rounds.read_text().splitlines()
    assert json.loads(recorded[-1])["labels_sha256"] == report.labels_sha256
    for _ in range(3):  # polls with nothing new
        assert watcher.step() is None
    assert (
        Watcher(settings, metrics).step() is None
    )  # restarted: the last recorded round saw these labels
    assert rounds.read_text().splitlines() == recorded  # no further round ran
    assert (
        metrics.registry.get_sample_value("cad_trainer_rounds_total", {"outcome": "rejected"}) == 1
    )
    assert metrics.registry.get_sample_value("cad_trainer_new_labels") == 0
    some = frozenset(sorted(watcher.attempted or ())[:-3])  # as if the last three had arrived since
    assert Watcher(settings, metrics, attempted=some).new_labels() == 3


def test_presets_are_table3() -> None:
    assert PRESETS["frames"].first == Schedule(0.9, 1e-4, 1e-3, 0.95, 20)
    assert PRESETS["frames"].later == Schedule(0.9, 1e-4, 1e-4, 0.95, 15)
    assert PRESETS["polyp"].later == Schedule(0.9, 1e-4, 1e-3, 0.10, 3)
    assert PRESETS["pe"].first == Schedule(0.9, 1e-3, 1e-2, 0.95, 10)
    assert PRESETS["pe"].later == Schedule(0.9, 1e-3, 1e-2, 0.10, 5)
    assert [PRESETS[n].scratch.epochs for n in ("frames", "polyp", "pe")] == [20, 10, 20]
    # SqueezeNet's: Table 3 polyp's rates / 100 (its Caffe-scale activations), same momentum and bias rule
    squeeze = PRESETS["polyp-squeezenet"]
    assert squeeze.first == Schedule(0.9, 1e-5, 1e-4, 0.95, 5) and squeeze.scratch.epochs == 10


def test_param_groups_bias_rate_last_layer_and_depth() -> None:
    net = CadNet()
    groups = {
        g["name"]: g["lr"] for g in param_groups(net, Schedule(0.9, 1e-3, 1e-2, 0.95, 1), "fc6")
    }
    assert groups == {
        "fc6.weight": 1e-3,
        "fc6.bias": 2e-3,
        "fc7.weight": 1e-3,
        "fc7.bias": 2e-3,
        "fc8.weight": 1e-2,
        "fc8.bias": 2e-2,
    }
    assert (
        not net.backbone.features[0].weight.requires_grad
        and net.backbone.classifier[1].weight.requires_grad
    )
    deep = param_groups(CadNet(), Schedule(0.9, 1e-3, 1e-2, 0.95, 1), "conv1")
    assert len(deep) == 16


def test_auc_ci_and_sensitivity() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300).astype(bool)
    s = rng.normal(size=300) + y * 1.0
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in s[y] for n in s[~y]])
    assert roc_auc(y, s) == pytest.approx(brute)
    low, high = auc_ci(y, s)
    assert low < roc_auc(y, s) < high and high - low < 0.2
    assert sensitivity_at_fpr([0, 0, 1, 1], [0.1, 0.9, 0.8, 0.95], fpr=0.0) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_balanced_epoch_keeps_every_example() -> None:
    order = balanced_epoch([0] * 10 + [1] * 3, np.random.default_rng(0))
    labels = np.array([0] * 10 + [1] * 3)[order]
    assert (labels == 0).sum() == (labels == 1).sum() == 10 and set(order) == set(range(13))


def test_fine_tuning_is_seeded_and_reproducible(world: World) -> None:
    from trainer.data import PatchSource, labeled_examples
    from trainer.finetune import fine_tune

    store = open_store(world.store_url)
    examples = labeled_examples(store)[:8]
    store.close()
    source = PatchSource(
        __import__("cad.labels.archive", fromlist=["ImageArchive"]).ImageArchive(world.archive),
        64,
    )
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        net = CadNet(input_size=64)
        fine_tune(
            net,
            examples,
            source,
            Schedule(0.9, 1e-3, 1e-2, 0.95, 1),
            "fc6",
            16,
            seed=5,
            progress=False,
        )
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.slow
def test_cli_round_and_model_commands(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from cadcli.main import main

    common = ["--registry", str(world.root)]
    args = [
        "train",
        "round",
        *common,
        "--store-url",
        world.store_url,
        "--archive-root",
        str(world.archive),
        "--val-fraction",
        "0.4",
        "--auc-tolerance",
        "1.0",
        "--depth",
        "fc8",
        "--start-version",
        "1",
        "--log-level",
        "WARNING",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "round: published" in out and "parent v1" in out
    newest = ModelRegistry(world.root, "cad").latest()
    assert main(["model", "list", *common]) == 0
    listing = capsys.readouterr().out
    assert f"{newest:>7}" in listing and "newest" in listing
    assert main(["model", "show", "1", *common]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 1
    assert main(["model", "rollback", "1", *common, "--reason", "test"]) == 0
    assert ModelRegistry(world.root, "cad").pinned() == 1
    assert main(["model", "rollback", "999", *common]) == 2
    assert main(["model", "unpin", *common]) == 0
    assert ModelRegistry(world.root, "cad").pinned() is None


@pytest.mark.slow
def test_quantize_command_publishes_an_int8_variant_from_the_label_store(world: World) -> None:
    from cadcli.main import main as cad

    registry = ModelRegistry(world.root, "cad")
    version = registry.target()
    code = cad(
        [
            "model",
            "quantize",
            "--registry",
            str(world.root),
            "--store-url",
            world.store_url,
            "--archive-root",
            str(world.archive),
            "--calibration-patches",
            "32",
        ]
    )
    assert code == 0
    variant = registry.variant(version, "int8")  # type: ignore[arg-type]
    q = variant.manifest.quantization if variant else None
    assert q is not None and q.eval_candidates == 32 and q.calibration_patches == 32
    again = cad(
        [
            "model",
            "quantize",
            "--registry",
            str(world.root),
            "--store-url",
            world.store_url,
            "--archive-root",
            str(world.archive),
        ]
    )
    assert again == 2  # variants are immutable: a second one for the same version is refused


def test_a_second_trainer_is_refused_while_one_holds_the_lease(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two trainers would publish two children of one parent: `cad train round` and a watcher
    refuse, naming the holder, while another trainer holds the store's lease."""
    from cadcli.main import main

    registry = ModelRegistry(world.root, "cad")
    rounds = registry.model_dir / ROUNDS_FILE
    versions, before = registry.versions(), rounds.read_text() if rounds.exists() else ""
    store = open_store(world.store_url)
    holder = holder_name("cad train watch")
    try:
        with store.lease(TRAINER_LEASE, holder):
            code = main(
                [
                    "train",
                    "round",
                    "--registry",
                    str(world.root),
                    "--store-url",
                    world.store_url,
                    "--archive-root",
                    str(world.archive),
                    "--log-level",
                    "WARNING",
                ]
            )
            err = capsys.readouterr().err
            assert code == 4 and holder in err and "trainer lease is held" in err
            metrics = TrainerMetrics(__import__("prometheus_client").CollectorRegistry())
            with pytest.raises(LeaseHeld, match="cad train watch on"):
                Watcher(world.settings(min_new_labels=1), metrics).run(threading.Event(), 1)
        assert registry.versions() == versions  # nothing published, no round recorded
        assert (rounds.read_text() if rounds.exists() else "") == before
        with store.lease(TRAINER_LEASE, holder):  # released: it can be taken again
            pass
    finally:
        store.close()


def test_the_device_setting_names_what_torch_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    """CAD_DEVICE: auto picks CUDA only where torch sees a usable device; cuda named on a machine
    without one is an error that says so; anything else is refused by the settings."""
    from pydantic import ValidationError

    from trainer.device import resolve_device
    from trainer.settings import TrainerSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees 0 usable CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="torch sees 1 usable CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setenv("CAD_DEVICE", "gpu")
    with pytest.raises(ValidationError, match="device"):
        TrainerSettings()
    monkeypatch.setenv("CAD_DEVICE", "cuda:0")
    assert TrainerSettings().device == "cuda:0"


def _fine_tuned(world: World, device: str, depth: str) -> tuple[dict, list]:
    """A seeded fine-tune of a 64-px AlexNet on ``device``, and its scores on the examples."""
    from cad.labels.archive import ImageArchive
    from trainer.data import PatchSource, labeled_examples
    from trainer.finetune import candidate_probabilities, fine_tune
    from trainer.trunk import TrunkCache

    store = open_store(world.store_url)
    examples = labeled_examples(store)[:8]
    store.close()
    source = PatchSource(ImageArchive(world.archive), 64)
    torch.manual_seed(0)
    net = CadNet(input_size=64).to(device)
    schedule = Schedule(0.9, 1e-3, 1e-2, 0.95, 1)
    fine_tune(net, examples, source, schedule, depth, 16, seed=5, progress=False)
    probs = candidate_probabilities(net, examples, source, progress=False, depth=depth)
    TrunkCache().clear()
    return {k: v.cpu() for k, v in net.state_dict().items()}, probs


def test_the_trainer_runs_where_the_network_is(world: World) -> None:
    """Tensors follow the network: on the CPU the results are exactly those of a network that
    was never moved; the scores come back as numpy arrays whatever the device."""
    moved, probs = _fine_tuned(world, "cpu", "fc6")
    assert all(isinstance(p, np.ndarray) and p.shape[1] == 2 for p in probs)
    again, probs_again = _fine_tuned(world, "cpu", "fc6")
    assert all(torch.equal(moved[k], again[k]) for k in moved)
    assert all(np.array_equal(a, b) for a, b in zip(probs, probs_again, strict=True))


CUDA_USABLE = torch.cuda.is_available() and torch.cuda.device_count() > 0


@pytest.mark.skipif(not CUDA_USABLE, reason="no usable CUDA device")
@pytest.mark.parametrize("depth", ["fc6", "conv1"])
def test_a_cuda_round_trains_to_the_cpus_result_within_noise(world: World, depth: str) -> None:
    """The same seeded fine-tune on CUDA and on the CPU: the same network within floating-point
    noise (cuDNN's kernels sum in another order), and the same scores within 1e-3."""
    on_cpu, cpu_probs = _fine_tuned(world, "cpu", depth)
    on_gpu, gpu_probs = _fine_tuned(world, "cuda", depth)
    for k in on_cpu:
        assert torch.allclose(on_cpu[k].float(), on_gpu[k].float(), atol=1e-3), k
    for a, b in zip(cpu_probs, gpu_probs, strict=True):
        assert np.abs(a - b).max() <= 1e-3


def test_keyed_baselines_are_written_for_the_pool_and_served_in_their_order(
    world: World,
) -> None:
    from prometheus_client import CollectorRegistry

    from cad.labels.archive import ImageArchive
    from cad.labels.review import ReviewService
    from cad.metrics import ServiceMetrics
    from trainer.rescore import keyed_methods, write_queue_keys

    with pytest.raises(ValueError, match="magic"):
        keyed_methods("bald, magic")
    with pytest.raises(ValueError, match="margin"):
        run_round(world.settings(queue_keys="margin"), progress=False)  # before any work
    store = open_store(world.store_url)
    registry = ModelRegistry(world.root, "cad").with_pins_in(store)
    try:
        settings = world.settings(queue_keys="bald,coreset,typiclust", queue_keys_budget=3)
        keyed = write_queue_keys(
            store,
            ImageArchive(world.archive),
            registry,
            keyed_methods(settings.queue_keys),
            settings,
            progress=False,
        )
        assert keyed == world.unlabeled
        review = ReviewService(store, ServiceMetrics(CollectorRegistry()))
        version = str(registry.target())
        for method in ("bald", "coreset", "typiclust"):
            assert store.queue.queue_key_versions(method) == {version: world.unlabeled}
            items = review.annotation_queue(100, method).items
            assert len(items) == world.unlabeled
            keys = [s for _, s in items]
            assert keys == sorted(keys, reverse=True)
        bald = [s for _, s in review.annotation_queue(100, "bald").items]
        assert min(bald) >= 0 and max(bald) > 0  # dropout made the passes differ
        coreset = [s for _, s in review.annotation_queue(100, "coreset").items]
        assert sum(k > 1 for k in coreset) == 3  # the budget's picks rank above the rest
    finally:
        store.close()


def test_candidate_views_sample_dropout_and_refuse_a_top_without_one(tmp_path: Path) -> None:
    from cad.aift.patches import Box
    from cad.labels.archive import ImageArchive
    from trainer.baselines import NoDropout, candidate_views
    from trainer.data import Example, PatchSource

    archive = ImageArchive(tmp_path / "archive")
    rng = np.random.default_rng(0)
    sha, _ = archive.put(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    examples = [
        Example(f"c{i}", sha, Box(10 + 5 * i, 10, 30, 30), "polyp:4", 0, "s") for i in range(3)
    ]
    net = CadNet(input_size=64, architecture="squeezenet1_0")
    source = PatchSource(archive, 64)
    views = candidate_views(net, examples, source, "fire9", passes=8, seed=3, progress=False)
    assert views.features.shape == (3, 512) and views.samples is not None
    assert views.samples.shape == (3, 8, 2)
    assert np.ptp(views.samples[:, :, 1], axis=1).max() > 0  # the masks differ
    again = candidate_views(net, examples, source, "fire9", passes=8, seed=3, progress=False)
    np.testing.assert_array_equal(views.samples, again.samples)  # seeded
    np.testing.assert_array_equal(views.features, again.features)  # features: no dropout
    with pytest.raises(NoDropout):
        candidate_views(CadNet(input_size=64), examples, source, "fc8", passes=4)


def test_the_gate_holds_a_version_to_the_audit_slice_once_it_has_enough_labels(
    world: World,
) -> None:
    from trainer.gate import gate_decision

    registry = ModelRegistry(world.root, "cad")
    parent = registry.get(1)
    settings = world.settings(auc_tolerance=0.01, audit_min_labels=30)
    base = {"val_auc": 0.9, "parent_val_auc": 0.9}
    worse = {
        "audit_auc": 0.80,
        "parent_audit_auc": 0.85,
        "audit": {"auc_low": 0.7, "auc_high": 0.9},
    }
    said, refused = gate_decision({**base, **worse, "audit_labels": 12}, settings, parent, 40)
    assert not refused and "audit slice AUC 0.8000 [0.700, 0.900] on 12 labels (reported)" in said
    said, refused = gate_decision({**base, **worse, "audit_labels": 40}, settings, parent, 40)
    assert not said and "audit-slice AUC 0.8000" in refused and "40 labels" in refused
    better = {**worse, "audit_auc": 0.86}
    said, refused = gate_decision({**base, **better, "audit_labels": 40}, settings, parent, 40)
    assert not refused and "audit slice AUC 0.8600" in said


@pytest.mark.slow
def test_a_round_never_trains_on_the_audit_slice_and_reports_it(world: World) -> None:
    from trainer.data import ids_hash, labeled_examples

    store = open_store(world.store_url)
    labeled = labeled_examples(store)
    chosen = [e.candidate_id for e in labeled if e.label == 1][:3] + [
        e.candidate_id for e in labeled if e.label == 0
    ][:5]
    mark = "UPDATE candidates SET audit_slice = ? WHERE candidate_id IN ({})".format(
        ", ".join("?" * len(chosen))
    )
    store._query(mark, (1, *chosen))  # as if recorded with CAD_AUDIT_FRACTION
    try:
        kept = labeled_examples(store)
        assert {e.candidate_id for e in kept}.isdisjoint(chosen) and len(kept) == len(labeled) - 8
        report = run_round(world.settings(depth="fc8", rescore=False), progress=False)
        assert report.outcome == "published", report.reason
        assert report.audit == 8 and report.labels == len(kept)
        assert report.metrics["audit_labels"] == 8 and report.metrics["audit_auc"] is not None
        assert "audit slice AUC" in report.reason and "(reported)" in report.reason
        m = ModelRegistry(world.root, "cad").get(report.version).manifest  # type: ignore[arg-type]
        assert m.labels.count == len(kept) and m.labels.ids_sha256 == ids_hash(kept)
        assert "audit slice 8 labels" in report.summary()
    finally:
        store._query(mark, (0, *chosen))
        store.close()


def test_a_stopped_rescoring_goes_on_where_it_stopped_and_shards_share_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cad.labels.archive import ImageArchive
    from trainer.rescore import rescore_pool

    store = open_store(world.store_url)
    archive = ImageArchive(world.archive)
    registry = ModelRegistry(world.root, "cad").with_pins_in(store)
    target = str(registry.target())
    pool = [e.candidate_id for e in store.queue.unlabeled()]
    n = len(pool)

    def reset() -> None:  # as if an older version had scored the whole pool
        _scored_by_an_older_version(store, pool)

    try:
        reset()
        real, calls = store.pool.update_predictions, []

        def dies_on_the_second_page(version: str, rows: object) -> None:
            calls.append(version)
            if len(calls) == 2:
                raise RuntimeError("killed")
            real(version, rows)  # type: ignore[arg-type]

        monkeypatch.setattr(store.pool, "update_predictions", dies_on_the_second_page)
        with pytest.raises(RuntimeError, match="killed"):
            rescore_pool(store, archive, registry, progress=False, page_size=3)
        monkeypatch.undo()
        assert store.pool.pool_count(target) == n - 3  # the first page's scores were kept
        assert rescore_pool(store, archive, registry, progress=False, page_size=3) == n - 3
        assert store.pool.pool_count(target) == 0 and store.pool.scored_versions() == {target: n}
        assert rescore_pool(store, archive, registry, progress=False) == 0  # nothing left
        reset()
        parts = [
            rescore_pool(store, archive, registry, progress=False, shard=(i, 2)) for i in range(2)
        ]
        assert sum(parts) == n and store.pool.scored_versions() == {target: n}
    finally:
        store.close()
    from cadcli.main import main

    common = ["--registry", str(world.root), "--store-url", world.store_url]
    common += ["--archive-root", str(world.archive)]
    for shard in ("0/2", "1/2"):
        assert main(["train", "rescore", *common, "--shard", shard, "--again"]) == 0
    with pytest.raises(SystemExit):
        main(["train", "rescore", *common, "--shard", "2/2"])


def _rescoring_world(
    world: World,
) -> tuple[SqlLabelStore, ImageArchive, ModelRegistry, int, list[str]]:
    """The world's store, archive, registry, the version servers follow and its unlabeled pool."""
    store = open_store(world.store_url)
    registry = ModelRegistry(world.root, "cad").with_pins_in(store)
    version = registry.target()
    assert version is not None
    pool = [e.candidate_id for e in store.queue.unlabeled()]
    return store, ImageArchive(world.archive), registry, version, pool


def _scored_by_an_older_version(store: SqlLabelStore, pool: list[str]) -> None:
    """As if version 0 had scored the whole pool (what a re-scoring then refreshes)."""
    store.pool.update_predictions(
        "0", [(c, store.get_candidate(c).patch_probs, 0.5, 1.0, 1.0, 1.0) for c in pool]
    )


def test_an_int8_prescreen_screens_with_a_quantised_model_and_scores_the_budget_in_fp32(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CAD_RESCORE_PRESCREEN_PRECISION=int8: the whole-pool pass runs an int8 model (quantised
    for the pass when the version has none published, the published one when it has), and the
    budget it chooses is still scored by the version itself, exactly as a full-precision
    re-scoring scores it."""
    import onnx

    import trainer.pool
    import trainer.rescore as rescore
    from cad.aift.patches import parse_recipe
    from trainer.quantize import quantize_version

    store, archive, registry, version, pool = _rescoring_world(world)
    target = str(version)
    screened: list[tuple[str | None, bool, list[str]]] = []
    real = trainer.pool.onnx_scorer

    def recording(info, archive, threads=0):  # type: ignore[no-untyped-def]
        ops = [node.op_type for node in onnx.load(str(info.model_path)).graph.node]
        published = info.path.parent.name == "variants"
        screened.append((info.manifest.variant, published, ops))
        return real(info, archive, threads)

    monkeypatch.setattr(trainer.pool, "onnx_scorer", recording)
    try:
        _scored_by_an_older_version(store, pool)
        with pytest.raises(ValueError, match="fp32 or int8"):
            rescore.rescore_pool(
                store, archive, registry, False, budget=3, prescreen=1, prescreen_precision="fp16"
            )
        done = rescore.rescore_pool(
            store, archive, registry, False, budget=3, prescreen=2, prescreen_precision="int8"
        )
        assert done == 3 and store.pool.scored_versions().get(target) == 3
        # the exact scorer (the version, fp32), then the pre-screen's: quantised here
        assert [(v, p) for v, p, _ in screened] == [("fp32", False), ("int8", False)]
        assert "QuantizeLinear" not in screened[0][2] and "QuantizeLinear" in screened[1][2]
        chosen = {r.candidate_id for r in store.pool.pool_rows(pool)} - {
            r.candidate_id for r in store.pool.pool_rows(pool, skip_version=target)
        }
        budget_probs = {c: store.get_candidate(c).patch_probs for c in chosen}
        rescore.rescore_pool(store, archive, registry, False, again=True)  # fp32, every one
        for c, probs in budget_probs.items():
            np.testing.assert_allclose(probs, store.get_candidate(c).patch_probs, atol=1e-6)

        # a published int8 variant is the one the pre-screen runs
        per = parse_recipe(store.get_candidate(pool[0]).recipe).count
        size = registry.get(version).manifest.input_size
        patches = np.stack(
            [np.full((3, size, size), v, np.float32) for v in np.linspace(0, 255, 2 * per)]
        )
        quantize_version(registry, version, patches, patches[: 2 * per], [0, 1], per)
        screened.clear()
        _scored_by_an_older_version(store, pool)
        rescore.rescore_pool(
            store, archive, registry, False, budget=3, prescreen=1, prescreen_precision="int8"
        )
        assert [(v, p) for v, p, _ in screened] == [("fp32", False), ("int8", True)]
    finally:
        store.close()


def test_a_budgeted_rescoring_refreshes_the_top_the_newest_and_a_sample_within_its_budget(
    world: World,
) -> None:
    from cad.aift import VARIANTS
    from trainer.rescore import budgeted_selection, rescore_pool

    store, archive, registry, version, pool = _rescoring_world(world)
    target = str(version)
    n = len(pool)
    assert n >= 8
    try:  # as if an older version had scored the whole pool
        _scored_by_an_older_version(store, pool)
        top = [
            e.candidate_id for e, _ in store.queue.ranked_unlabeled(VARIANTS["entropy_alpha"], 2)
        ]
        newest = store.pool.newest_unlabeled(1)
        chosen = budgeted_selection(store, version, 4)
        assert len(chosen) == len(set(chosen)) == 4
        assert set(top) | set(newest) <= set(chosen)  # the top half, the newest quarter
        assert len(budgeted_selection(store, version, n + 10, "margin")) == n  # never more
        # a window's top share: 1 takes the ranking's top alone, in the order served
        served = [
            e.candidate_id for e, _ in store.queue.ranked_unlabeled(VARIANTS["entropy_alpha"], 4)
        ]
        assert budgeted_selection(store, version, 4, skip_scored=False, top_share=1.0) == served
        three = budgeted_selection(store, version, 4, skip_scored=False, top_share=0.75)
        assert three[:3] == served[:3] and newest[0] in three  # the newest quarter stays
        with pytest.raises(ValueError, match="share of the top"):
            rescore_pool(store, archive, registry, False, budget=2, prescreen=1,
                         prescreen_window=4, window_top=1.5)  # fmt: skip
        assert rescore_pool(store, archive, registry, progress=False, budget=4) == 4
        assert store.pool.scored_versions() == {target: 4, "0": n - 4}
        unscored = {r.candidate_id for r in store.pool.pool_rows(pool, skip_version=target)}
        assert set(pool) - unscored == set(chosen)
        with pytest.raises(ValueError, match="shard"):
            rescore_pool(store, archive, registry, progress=False, budget=4, shard=(0, 2))
        with pytest.raises(ValueError, match="AIFT variant or margin"):
            rescore_pool(store, archive, registry, progress=False, budget=4, order="bald")
    finally:
        store.close()
    from cadcli.main import main

    common = ["--registry", str(world.root), "--store-url", world.store_url]
    common += ["--archive-root", str(world.archive)]
    assert main(["train", "rescore", *common, "--budget", "3", "--prescreen", "0"]) == 0
    store = open_store(world.store_url)
    try:
        # the sample's two are always new, the top one unless the top is fresh already
        assert 6 <= store.pool.scored_versions()[target] <= 7
    finally:
        store.close()


def test_a_prescreened_budget_rescores_the_top_of_a_cheap_whole_pool_pass(world: World) -> None:
    """The pre-screen scores every unlabeled candidate on its first patches only and the budget
    goes to its best; with every patch it chooses exactly the exact ranking's top."""
    from cad.aift import VARIANTS
    from cad.aift.patches import parse_recipe
    from trainer.prescreen import first_patches, prescreened_selection
    from trainer.rescore import budgeted_selection, rescore_pool

    store, archive, registry, version, pool = _rescoring_world(world)
    target = str(version)
    n = len(pool)
    recipe = store.get_candidate(pool[0]).recipe
    full = parse_recipe(recipe).count
    assert n >= 8 and full >= 2
    assert first_patches(recipe, 1) == f"{parse_recipe(recipe).name}:1"
    assert first_patches(recipe, full + 5) == recipe
    try:
        # a stand-in network: candidate i is most uncertain for the largest i; it must be
        # handed one patch a candidate
        rank = {cid: i for i, cid in enumerate(sorted(pool))}
        seen: list[int] = []

        def score(examples):  # type: ignore[no-untyped-def]
            seen.extend(parse_recipe(e.recipe).count for e in examples)
            q = [0.9 - 0.4 * rank[e.candidate_id] / n for e in examples]
            return [np.array([[1 - p, p]]) for p in q]

        chosen = prescreened_selection(store, archive, score, version, 3, 1, page_size=3)
        assert seen == [1] * n  # the whole pool, one patch each, across pages of 3
        assert chosen == sorted(pool)[-3:][::-1]  # the three most uncertain, best first
        with pytest.raises(ValueError, match="AIFT variant or margin"):
            prescreened_selection(store, archive, score, version, 3, 1, order="bald")

        # a window: only its candidates are screened (what a round costs no longer grows with
        # the pool), and the budget is their best
        window = sorted(pool)[:5]
        seen.clear()
        chosen = prescreened_selection(store, archive, score, version, 2, 1, window=window)
        assert seen == [1] * 5 and chosen == window[-2:][::-1]
        # a window shared by two workers: each screens its shard's part of it, once
        seen.clear()
        halves = [
            prescreened_selection(store, archive, score, version, 5, 1, shard=(i, 2), window=window)
            for i in range(2)
        ]
        assert seen == [1] * 5 and sorted(halves[0] + halves[1]) == window

        # with the real version on every patch the budget is the exact ranking's top (as if
        # an older version had scored the whole pool)
        _scored_by_an_older_version(store, pool)
        assert rescore_pool(store, archive, registry, progress=False, budget=3, prescreen=full) == 3
        assert store.pool.scored_versions().get(target) == 3
        prescreened = {r.candidate_id for r in store.pool.pool_rows(pool)} - {
            r.candidate_id for r in store.pool.pool_rows(pool, skip_version=target)
        }
        rescore_pool(store, archive, registry, progress=False)  # the rest, exactly
        exact = [
            e.candidate_id for e, _ in store.queue.ranked_unlabeled(VARIANTS["entropy_alpha"], 3)
        ]
        assert prescreened == set(exact)
        with pytest.raises(ValueError, match="budget"):
            rescore_pool(store, archive, registry, progress=False, prescreen=1)

        # windowed in a round: the budget comes from the window chosen off the indexes
        _scored_by_an_older_version(store, pool)
        expected_window = budgeted_selection(store, version, 4, previous="0", skip_scored=False)
        assert rescore_pool(store, archive, registry, False, budget=2, prescreen=1,
                            prescreen_window=4) == 2  # fmt: skip
        windowed = {r.candidate_id for r in store.pool.pool_rows(pool)} - {
            r.candidate_id for r in store.pool.pool_rows(pool, skip_version=target)
        }
        assert len(windowed) == 2 and windowed <= set(expected_window)
        # a window of the top alone (CAD_RESCORE_PRESCREEN_WINDOW_TOP=1): the budget comes
        # from the four the queue serves first
        _scored_by_an_older_version(store, pool)
        served = [
            e.candidate_id for e, _ in store.queue.ranked_unlabeled(VARIANTS["entropy_alpha"], 4)
        ]
        assert rescore_pool(store, archive, registry, False, budget=2, prescreen=1,
                            prescreen_window=4, window_top=1.0) == 2  # fmt: skip
        windowed = {r.candidate_id for r in store.pool.pool_rows(pool)} - {
            r.candidate_id for r in store.pool.pool_rows(pool, skip_version=target)
        }
        assert len(windowed) == 2 and windowed <= set(served)
        with pytest.raises(ValueError, match="window"):
            rescore_pool(store, archive, registry, False, budget=2, prescreen_window=4)
        # two workers sharing the window: each scores at most its half of the budget, from its
        # own shard's part of the window (a window chosen after the other worker wrote its
        # scores may reach one past the first four), and no candidate twice
        _scored_by_an_older_version(store, pool)
        ranked = [
            e.candidate_id for e, _ in store.queue.ranked_unlabeled(VARIANTS["entropy_alpha"], 5)
        ]
        done = [
            rescore_pool(
                store, archive, registry, False, budget=2, prescreen=1, prescreen_window=4,
                window_top=1.0, shard=(i, 2),
            )
            for i in range(2)
        ]  # fmt: skip
        windowed = {r.candidate_id for r in store.pool.pool_rows(pool)} - {
            r.candidate_id for r in store.pool.pool_rows(pool, skip_version=target)
        }
        assert sum(done) == len(windowed) and 1 <= len(windowed) <= 2
        assert [len(store.pool.pool_rows(list(windowed), shard=(i, 2))) for i in range(2)] == done
        assert windowed <= set(served) | set(ranked[4:5])

        # sharded: each of two workers pre-screens its part and scores its best half of the
        # budget; together they score the budget, each candidate once
        _scored_by_an_older_version(store, pool)
        parts = [
            prescreened_selection(store, archive, score, version, 2, 1, shard=(i, 2))
            for i in range(2)
        ]
        shards = [
            [r.candidate_id for r in store.pool.pool_page("", n, None, (i, 2))] for i in range(2)
        ]
        assert sorted(shards[0] + shards[1]) == sorted(pool)
        # each part is its own shard's most uncertain two (the stand-in ranks by id)
        assert parts == [sorted(mine)[-2:][::-1] for mine in shards]
        done = [
            rescore_pool(store, archive, registry, False, budget=4, prescreen=1, shard=(i, 2))
            for i in range(2)
        ]
        assert done == [min(2, len(mine)) for mine in shards]
        assert store.pool.scored_versions().get(target) == sum(done)
    finally:
        store.close()
