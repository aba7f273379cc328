"""The model registry: atomic, numbered, checksummed versions; refused broken versions."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cad.metrics import ServiceMetrics
from cad.models.manager import ModelManager
from cad.models.manifest import ManifestError
from cad.models.providers import SessionOptions
from cad.models.registry import MODEL_FILE, ModelRegistry, sha256_file
from support.helpers import TINY_MANIFEST, make_tiny_onnx, manifest_of, publish_tiny


def test_publish_numbers_versions_and_records_checksums(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    first = publish_tiny(root, tmp_path / "b")
    second = publish_tiny(root, tmp_path / "b")
    registry = ModelRegistry(root, "cad")
    assert registry.versions() == [1, 2] and registry.latest() == 2
    assert second.manifest.version == 2 and first.manifest.name == "cad"
    assert second.manifest.sha256 == sha256_file(second.path / MODEL_FILE)
    assert set(second.manifest.files) == {MODEL_FILE}


def test_staging_folders_are_never_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, "cad")
    (registry.model_dir / ".staging-crashed").mkdir(parents=True)
    (registry.model_dir / ".staging-crashed" / MODEL_FILE).write_bytes(b"half")
    (registry.model_dir / "7").mkdir()  # no manifest: an interrupted copy by hand
    assert registry.versions() == []


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    make_tiny_onnx(onnx_path)
    registry = ModelRegistry(tmp_path / "reg", "cad")
    results: list[int] = []
    lock = threading.Lock()

    def publish() -> None:
        info = registry.publish({MODEL_FILE: onnx_path}, TINY_MANIFEST)
        with lock:
            results.append(info.version)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 9)) and registry.versions() == list(range(1, 9))


def _manager(root: Path) -> tuple[ModelManager, ServiceMetrics]:
    metrics = ServiceMetrics(CollectorRegistry())
    return ModelManager(ModelRegistry(root, "cad"), SessionOptions(), metrics), metrics


@pytest.mark.parametrize("breakage", ["checksum", "truncated", "nan", "shape"])
def test_broken_version_is_refused_and_the_old_one_keeps_serving(
    tmp_path: Path, breakage: str
) -> None:
    root = tmp_path / "reg"
    publish_tiny(root, tmp_path / "b")
    manager, metrics = _manager(root)
    assert manager.refresh() and manager.require().version == 1
    if breakage == "nan":
        publish_tiny(root, tmp_path / "b", nan_output=True)
    elif breakage == "shape":
        bad = tmp_path / "shape.onnx"
        make_tiny_onnx(bad, channels=1)
        ModelRegistry(root, "cad").publish({MODEL_FILE: bad}, TINY_MANIFEST)
    else:
        info = publish_tiny(root, tmp_path / "b")
        model = info.path / MODEL_FILE
        data = model.read_bytes()
        model.write_bytes(data[: len(data) // 2] if breakage == "truncated" else data + b"\0")
    assert not manager.refresh()
    assert manager.require().version == 1
    assert 2 in manager.refused
    assert metrics.registry.get_sample_value("cad_model_load_failures_total") == 1
    assert not manager.refresh()  # refused once, not retried every poll
    assert metrics.registry.get_sample_value("cad_model_load_failures_total") == 1


def test_newest_good_version_is_chosen_when_the_latest_is_broken(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    publish_tiny(root, tmp_path / "b")
    publish_tiny(root, tmp_path / "b", nan_output=True)
    manager, _ = _manager(root)
    assert manager.refresh() and manager.require().version == 1


def test_listeners_hear_every_swap_refusal_pin_and_unpin_even_when_one_fails(
    tmp_path: Path,
) -> None:
    from cad.models.lifecycle import ModelListener

    heard: list[tuple] = []

    class Recorder(ModelListener):
        def on_swap(self, name, previous, model, pinned) -> None:
            heard.append(("swap", name, previous, model.version, pinned))

        def on_refused(self, name, version, reason) -> None:
            heard.append(("refused", name, version))

        def on_pin(self, name, version, actor, reason, previous) -> None:
            heard.append(("pin", version, actor, reason, previous))

        def on_unpin(self, name, actor) -> None:
            heard.append(("unpin", actor))

    class Broken(ModelListener):
        def on_swap(self, name, previous, model, pinned) -> None:
            raise RuntimeError("audit store down")

    root = tmp_path / "reg"
    publish_tiny(root, tmp_path / "b")
    manager = ModelManager(ModelRegistry(root, "cad"), SessionOptions(), listeners=[Broken()])
    manager.add_listener(Recorder())
    assert manager.refresh() and manager.require().version == 1  # the failing listener is skipped
    publish_tiny(root, tmp_path / "b", nan_output=True)  # v2: refused at its warm-up
    assert not manager.refresh() and manager.require().version == 1
    publish_tiny(root, tmp_path / "b")  # v3
    assert manager.refresh() and manager.require().version == 3
    manager.pin(1, "dr.ops", "rollback drill")
    manager.unpin("dr.ops")
    assert heard == [
        ("swap", "cad", None, 1, None),
        ("refused", "cad", 2),
        ("swap", "cad", 1, 3, None),
        ("swap", "cad", 3, 1, 1),
        ("pin", 1, "dr.ops", "rollback drill", None),
        ("unpin", "dr.ops"),
        ("swap", "cad", 1, 3, None),
    ]


# --------------------------------------------------------------------------- the typed manifest


def _write_manifest(root: Path, body: object) -> Path:
    path = root / "cad" / "1" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"colour": "blue"}, "unknown field 'colour'"),
        ({"input_size": None}, "field 'input_size' has a bad value"),
        ({"input_size": "64"}, "field 'input_size' has a bad value"),
        ({"input_size": True}, "field 'input_size' has a bad value"),
        ({"pretrained": {"source": "x", "origin": "y"}}, "unknown field 'pretrained.origin'"),
        ({"pretrained": {}}, "missing required field 'pretrained.source'"),
        ({"labels": {"count": 1.5}}, "field 'labels.count' has a bad value"),
        ({"classes": "background"}, "field 'classes' has a bad value"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_field(
    tmp_path: Path, change: dict[str, object], says: str
) -> None:
    info = publish_tiny(tmp_path / "good", tmp_path / "b")
    body = {**manifest_of(info), **change}
    path = _write_manifest(tmp_path / "bad", body)
    with pytest.raises(ManifestError) as caught:
        ModelRegistry(tmp_path / "bad", "cad").get(1)
    assert str(path) in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize("missing", ["input_size", "pretrained", "sha256", "name"])
def test_a_manifest_without_a_required_field_is_refused(tmp_path: Path, missing: str) -> None:
    info = publish_tiny(tmp_path / "good", tmp_path / "b")
    body = {k: v for k, v in manifest_of(info).items() if k != missing}
    _write_manifest(tmp_path / "bad", body)
    with pytest.raises(ManifestError, match=f"missing required field '{missing}'"):
        ModelRegistry(tmp_path / "bad", "cad").get(1)


def test_a_manifest_that_is_not_json_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, [])
    path.write_text("{ not json")
    with pytest.raises(ManifestError, match="manifest.json: not valid JSON"):
        ModelRegistry(tmp_path, "cad").get(1)


def test_nothing_is_published_from_fields_that_make_no_manifest(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    make_tiny_onnx(onnx_path)
    registry = ModelRegistry(tmp_path / "reg", "cad")
    with pytest.raises(ManifestError, match="missing required field 'pretrained'"):
        registry.publish({MODEL_FILE: onnx_path}, {"input_size": 32})
    with pytest.raises(ManifestError, match="unknown field 'auc_drop'"):
        registry.publish({MODEL_FILE: onnx_path}, {**TINY_MANIFEST, "auc_drop": 0.1})
    assert registry.versions() == [] and not list(registry.model_dir.glob(".staging-*"))


def test_the_manifest_reads_back_typed_and_round_trips(tmp_path: Path) -> None:
    info = publish_tiny(tmp_path / "reg", tmp_path / "b", recipe="polyp:4")
    m = ModelRegistry(tmp_path / "reg", "cad").get(1).manifest
    assert m == info.manifest and m.to_json() == manifest_of(info)
    assert (m.recipe, m.input_size, m.pretrained.source) == ("polyp:4", 32, "test")
    assert (m.architecture, m.classes, m.variant, m.labels.count) == (
        "alexnet",
        ("background", "finding"),
        "fp32",
        0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.recipe = "lesion"  # type: ignore[misc]


def test_a_version_that_fails_its_checks_is_never_pinned_even_briefly(tmp_path: Path) -> None:
    from cad.errors import ModelRejected

    root = tmp_path / "reg"
    publish_tiny(root, tmp_path / "b")
    bad = publish_tiny(root, tmp_path / "b")
    (bad.path / MODEL_FILE).write_bytes(b"not a model")
    manager, _ = _manager(root)
    writes: list[tuple[object, ...]] = []
    real_pin = manager.registry.pin

    def spy(*args: object, **kwargs: object) -> None:
        writes.append(args)
        real_pin(*args, **kwargs)  # type: ignore[arg-type]

    manager.registry.pin = spy  # type: ignore[method-assign]
    with pytest.raises(ModelRejected, match="checksum"):
        manager.pin(bad.version, "ops.kim", "drill")
    assert writes == [] and manager.registry.pinned() is None and bad.version in manager.refused
    served = manager.pin(1, "ops.kim", "drill")
    assert served.version == 1 and writes == [(1, "ops.kim", "drill")]


def test_model_prune_keeps_the_pinned_followed_and_served_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cad.labels.store import open_store
    from cadcli.main import main

    root = tmp_path / "registry"
    for _ in range(6):
        publish_tiny(root, tmp_path / "b")
    url = f"sqlite:///{tmp_path / 'labels.sqlite3'}"
    store = open_store(url)
    registry = ModelRegistry(root, "cad").with_pins_in(store)
    registry.pin(2, "ops", "rollback")
    store.fleet.heartbeat("replica-a", "cad", 3, "fp32", "host-a", "2026-01-01T00:00:00+00:00")
    store.fleet.heartbeat("replica-old", "cad", 4, "fp32", "host-b", "2026-01-01T00:00:00+00:00")
    store._query(
        "UPDATE replicas SET seen = '2020-01-01T00:00:00+00:00' WHERE replica_id = ?",
        ("replica-old",),
    )
    common = ["model", "prune", "--registry", str(root)]
    assert main([*common, "--keep", "2"]) == 2  # no store: refused, nothing removed
    assert "needs --store-url" in capsys.readouterr().err
    assert main([*common, "--keep", "2", "--store-url", url, "--dry-run"]) == 0
    assert registry.versions() == [1, 2, 3, 4, 5, 6]
    assert main([*common, "--keep", "2", "--store-url", url]) == 0
    out = capsys.readouterr().out
    # 5 and 6: the newest two; 2: pinned; 3: served by replica-a; 4's replica went silent
    assert registry.versions() == [2, 3, 5, 6], out
    assert "served by replica replica-a" in out and "pinned" in out
    pruned = [e for e in store.fleet.audit(action="prune_version")]
    assert sorted(e.target for e in pruned) == ["cad/v1", "cad/v4"]
    store.close()
