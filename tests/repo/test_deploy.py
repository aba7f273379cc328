"""Deployment files: promtool checks and rule unit tests, a real Prometheus server scraping a
running service, and the structure of the Dockerfile, compose file, Kubernetes manifests and
Grafana dashboard (every setting they name must exist)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from service.rpc.healthcheck import HealthcheckSettings
from service.rpc.server import ServerThread
from service.settings import ServerSettings
from support.helpers import make_settings
from trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HEALTHCHECK_ENV = {
    f"CAD_HEALTHCHECK_{n.upper()}" for n in HealthcheckSettings.model_fields if n != "port"
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found: .ci/run installs the Debian package prometheus")
        pytest.skip(f"{name} not installed")
    return path


def known_setting(name: str) -> bool:
    field = name.removeprefix("CAD_").lower()
    return (
        field in ServerSettings.model_fields
        or field in TrainerSettings.model_fields
        or name in HEALTHCHECK_ENV
    )


# --------------------------------------------------------------------------- Prometheus files


@pytest.mark.parametrize("config", ["prometheus.yml", "compose.yml"])
def test_promtool_accepts_the_configs(config: str) -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    check = subprocess.run(
        [tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "12 rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run(
        [tool("promtool"), "test", "rules", "alerts_test.yml"],
        cwd=ROOT / "tests" / "prometheus",
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def prometheus(registry_root: Path, tmp_path: Path) -> Iterator[tuple[str, ServerThread]]:
    binary = tool("prometheus")
    with ServerThread(make_settings(registry_root)) as server:
        server.refresh_models()
        config = tmp_path / "prometheus.yml"
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["alerts.yml"],
                    "scrape_configs": [
                        {
                            "job_name": "cad-server",
                            "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        for _attempt in range(3):  # the port is free when picked; retry if another process took it
            port = free_port()
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "prometheus.log").open("w"),
            )
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if api(base, "/api/v1/status/buildinfo")["status"] == "success":
                        break
                except OSError:
                    time.sleep(0.2)  # polling an external process until it answers
            if proc.poll() is None:
                break
        else:
            pytest.fail(
                "prometheus did not start: " + (tmp_path / "prometheus.log").read_text()[-2000:]
            )
        try:
            yield base, server
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_for(base: str, query: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = api(base, "/api/v1/query", query=query)["data"]["result"]
        if result:
            return result
        time.sleep(0.25)  # polling Prometheus until its scrape lands
    raise AssertionError(f"Prometheus never returned a result for {query}")


def test_real_prometheus_scrapes_the_service(prometheus: tuple[str, ServerThread]) -> None:
    base, server = prometheus
    with grpc.insecure_channel(server.address) as ch:
        raw = cad_pb2.RawImage(
            height=40,
            width=40,
            channels=1,
            pixel_type=cad_pb2.RawImage.UINT8,
            pixels=bytes(range(40)) * 40,
        )
        cad_pb2_grpc.CadInferenceStub(ch).Classify(
            cad_pb2.ClassifyRequest(
                raw=raw,
                candidates=[
                    cad_pb2.Candidate(client_id="a", box=cad_pb2.Box(x=2, y=2, width=20, height=20))
                ],
            ),
            timeout=30,
        )
    assert wait_for(base, 'up{job="cad-server"} == 1')
    assert float(wait_for(base, "cad_model_loaded")[0]["value"][1]) == 1
    requests = wait_for(base, 'cad_grpc_requests_total{method="Classify",code="OK"} >= 1')
    assert requests[0]["metric"]["job"] == "cad-server"
    info = wait_for(base, "cad_model_info")[0]["metric"]
    assert info["version"] == "1" and info["precision"] == "fp32"
    # The alert rules load and evaluate against the real series.
    deadline = time.monotonic() + 60
    while True:
        groups = api(base, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            break
        assert time.monotonic() < deadline, "the rules were never evaluated"
        time.sleep(0.25)
    assert len(rules) == 12 and all(r["health"] == "ok" for r in rules), rules
    assert not [r for r in rules if r["state"] == "firing"]  # a healthy server fires nothing
    # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cad.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert api(base, "/api/v1/query", query=target["expr"])["status"] == "success", target[
                "expr"
            ]


# --------------------------------------------------------------------------- containers and manifests


def test_dockerfile_has_the_four_targets_and_a_safe_serving_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = {
        line.split()[-1]
        for line in text.splitlines()
        if line.startswith("FROM ") and " AS " in line
    }
    assert {"build", "server", "server-gpu", "trainer", "trainer-gpu"} <= stages
    server = text.split("AS server\n", 1)[1].split("\nFROM ", 1)[0]
    assert (
        "USER 10001" in server and "HEALTHCHECK" in server and "service.rpc.healthcheck" in server
    )
    cpu = text.split("AS cpu\n", 1)[1].split("\nFROM ", 1)[0]  # what server and review-ui are
    assert "FROM cpu AS server" in text and "FROM cpu AS review-ui" in text
    assert "find_spec('torch') is None" in cpu and "torch==" not in cpu + server
    assert "--mount=type=bind,from=build" in cpu and "COPY --from" not in text  # wheels mounted
    assert "https://" not in text and "http://" not in text  # nothing names an external host
    trainer = text.split("AS trainer\n", 1)[1].split("\nFROM ", 1)[0]
    assert "torch==2.14.1" in trainer and "USER 10001" in trainer
    ui = text.split("AS review-ui\n", 1)[1].split("\nFROM ", 1)[0]
    assert "USER 10001" in ui and "reviewui.healthcheck" in ui and "torch==" not in ui
    for stage in text.split("\nFROM ")[1:]:
        if "pip install" in stage or "pip wheel" in stage:  # every stage running pip: its index
            for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
                assert f"ARG {arg}\n" in stage, (stage.split("\n", 1)[0], arg)
    assert 'ENTRYPOINT ["cad", "review-ui"]' in ui and "COPY reviewui ./reviewui" in text
    # every package the wheel installs is in the build context and copied into the build stage
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    context = (ROOT / ".dockerignore").read_text().splitlines()
    for package in (p.rstrip("*") for p in include):
        assert f"!{package}/" in context, f".dockerignore leaves {package}/ out of the build"
        assert f"COPY {package} ./{package}" in text, f"the build stage does not copy {package}"


def review_ui_setting(name: str) -> bool:
    from reviewui.settings import ReviewUiSettings

    return name.removeprefix("CAD_REVIEW_UI_").lower() in ReviewUiSettings.model_fields and (
        name.startswith("CAD_REVIEW_UI_")
    )


def test_compose_wires_server_trainer_postgres_prometheus_grafana() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"server", "trainer", "postgres", "prometheus", "grafana"} <= set(services)
    assert services["trainer"]["command"] == ["train", "watch"]
    assert services["server"]["build"]["target"] == "server"
    for name in ("server", "trainer"):
        env = services[name]["environment"]
        assert env["CAD_STORE_URL"].startswith("postgresql://")
        assert all(known_setting(k) for k in env if k.startswith("CAD_")), env
    ui = services["review-ui"]
    assert ui["build"]["target"] == "review-ui"
    unknown = [k for k in ui["environment"] if not review_ui_setting(k)]
    assert not unknown, f"the review UI is given variables it does not read: {unknown}"
    assert ui["environment"]["CAD_REVIEW_UI_TLS_CA"]  # it calls the server over TLS
    gateway = services["dicom-gateway"]
    assert gateway["build"]["target"] == "dicom-gateway"
    from gateway.settings import GatewaySettings

    fields = {f"CAD_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(gateway["environment"]) <= fields, "the gateway is given variables it does not read"
    for name in ("server", "review-ui", "trainer", "dicom-gateway"):
        assert set(services[name].get("secrets", [])) <= set(compose["secrets"]), name
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
    assert "alerts.yml" in (DEPLOY / "prometheus" / "compose.yml").read_text()
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    dashboard = json.loads((DEPLOY / "grafana/dashboards/cad.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {datasource["datasources"][0]["uid"]}


def k8s_docs() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_kubernetes_manifests() -> None:
    by_kind = k8s_docs()
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    (statefulset,) = by_kind["StatefulSet"]
    server = statefulset["spec"]  # each replica keeps its own spool volume
    assert server["replicas"] >= 2 and server["serviceName"] == "cad-server"
    assert [t["metadata"]["name"] for t in server["volumeClaimTemplates"]] == ["spool"]
    container = server["template"]["spec"]["containers"][0]
    assert {"name": "CAD_SPOOL_DIR", "value": "/spool"} in container["env"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == [
            "python",
            "-m",
            "service.rpc.healthcheck",
            "--service",
            "cad.v1.CadInference",  # in rotation while the database is down: it spools
        ], probe
    assert server["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    trainer = deployments["cad-trainer"]["spec"]
    assert trainer["replicas"] == 1 and trainer["strategy"]["type"] == "Recreate"
    assert trainer["template"]["spec"]["containers"][0]["args"] == ["train", "watch"]
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind["Service"]}
    assert {p["name"] for p in services["cad-server"]["ports"]} == {"grpc", "metrics"}
    assert services["cad-server"]["clusterIP"] == "None"  # headless: clients balance per call
    ui = deployments["cad-review-ui"]["spec"]["template"]["spec"]
    assert ui["securityContext"]["runAsNonRoot"] is True
    (ui_container,) = ui["containers"]
    assert ui_container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"] for p in services["cad-review-ui"]["ports"]} == {"https"}
    claims = {c["metadata"]["name"]: c["spec"] for c in by_kind["PersistentVolumeClaim"]}
    own = claims.pop("cad-dicom-gateway")  # the gateway's queues: one pod's, never shared
    assert own["accessModes"] == ["ReadWriteOnce"]
    assert deployments["cad-dicom-gateway"]["spec"]["strategy"]["type"] == "Recreate"
    assert all(c["accessModes"] == ["ReadWriteMany"] for c in claims.values())  # shared
    maps = {m["metadata"]["name"]: m["data"] for m in by_kind["ConfigMap"]}
    config, ui_config = maps["cad-settings"], maps["cad-review-ui-settings"]
    unknown = [k for k in config if not known_setting(k)]
    assert not unknown, f"ConfigMap names settings that do not exist: {unknown}"
    unknown = [k for k in ui_config if not review_ui_setting(k)]
    assert not unknown, f"the review UI's ConfigMap names settings it does not read: {unknown}"
    assert ui_container["envFrom"] == [{"configMapRef": {"name": "cad-review-ui-settings"}}]
    pdbs = {p["metadata"]["name"]: p["spec"] for p in by_kind["PodDisruptionBudget"]}
    assert pdbs["cad-server"]["maxUnavailable"] == 1
    assert pdbs["cad-server"]["selector"] == server["selector"]
    assert pdbs["cad-review-ui"]["selector"] == deployments["cad-review-ui"]["spec"]["selector"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind["NetworkPolicy"]}
    assert {"cad-server", "cad-trainer", "cad-review-ui", "cad-db"} <= set(policies)
    assert all(set(p["policyTypes"]) >= {"Ingress"} for p in policies.values())
    ui_egress = policies["cad-review-ui"]["egress"]
    assert {p["port"] for rule in ui_egress for p in rule["ports"]} == {50051, 5432, 53}
    assert deployments["cad-review-ui"]["spec"]["replicas"] >= 2  # sign-ins are in the store
    (ui_store,) = [e for e in ui_container["env"] if e["name"] == "CAD_REVIEW_UI_STORE_URL"]
    assert ui_store["valueFrom"]["secretKeyRef"] == {"name": "cad-review-ui-db", "key": "uri"}


def workload_secrets(workload: dict) -> dict[str, set[str]]:
    """Secret name -> the keys a workload's pods can read (mounted whole, or one key by ref)."""
    secrets = k8s_docs()["Secret"]
    keys = {s["metadata"]["name"]: set(s["stringData"]) for s in secrets}
    spec = workload["spec"]["template"]["spec"]
    found: dict[str, set[str]] = {}
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            found.setdefault(name, set()).update(keys[name])
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                found.setdefault(ref["name"], set()).add(ref["key"])
        for source in container.get("envFrom", []):
            assert "secretRef" not in source, "a whole Secret as environment"
    return found


def test_each_component_gets_only_the_secrets_it_needs() -> None:
    """One Secret per component: the review page never sees the database password or the
    server's TLS key, the trainer only the database URL (every pod mounted all of them)."""
    by_kind = k8s_docs()
    workloads = {w["metadata"]["name"]: w for w in by_kind["Deployment"] + by_kind["StatefulSet"]}

    def readable(name: str) -> set[str]:
        return {key for keys in workload_secrets(workloads[name]).values() for key in keys}

    ui = workload_secrets(workloads["cad-review-ui"])  # sign-ins: a database of their own
    assert ui == {
        "cad-review-ui-secrets": {"review-ui.crt", "review-ui.key", "ca.crt"},
        "cad-review-ui-db": {"uri"},
    }
    assert readable("cad-trainer") == {"uri"}
    assert readable("cad-server") == {
        "tokens.json",
        "tls.crt",
        "tls.key",
        "ca.crt",
        "uid_hash_key",
        "uri",
    }
    # every file setting of a component's ConfigMap is a key it can read (the trainer shares
    # cad-settings but reads none of its files)
    config = {m["metadata"]["name"]: m["data"] for m in by_kind["ConfigMap"]}
    for name, data in (
        ("cad-server", config["cad-settings"]),
        ("cad-review-ui", config["cad-review-ui-settings"]),
    ):
        mounted = {Path(v).name for k, v in data.items() if k.endswith(("_FILE", "_CA"))}
        assert mounted <= readable(name), (name, mounted - readable(name))


def test_images_are_tagged_with_the_project_version_and_postgres_is_described() -> None:
    import tomllib

    version = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"]
    images = [
        c["image"]
        for w in k8s_docs()["Deployment"] + k8s_docs()["StatefulSet"]
        for c in w["spec"]["template"]["spec"]["containers"]
        + w["spec"]["template"]["spec"].get("initContainers", [])
    ]
    assert images and all(i.split(":", 1)[1] == version for i in images), images
    cluster, sessions = list(
        yaml.safe_load_all((DEPLOY / "k8s" / "postgres" / "cloudnative-pg.yaml").read_text())
    )
    # the review page's sign-ins: a database and a role of their own, never the labels'
    (role,) = cluster["spec"]["managed"]["roles"]
    assert sessions["kind"] == "Database" and sessions["spec"]["owner"] == role["name"]
    assert (
        sessions["spec"]["name"] != "cad" and role["passwordSecret"]["name"] == "cad-review-ui-db"
    )
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1" and cluster["kind"] == "Cluster"
    assert cluster["spec"]["instances"] >= 2
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "cad", "owner": "cad"}
    assert cluster["metadata"]["name"] == "cad-db"  # its Secret cad-db-app holds the uri


@pytest.mark.skipif(
    shutil.which("docker-compose") is None and not os.environ.get("CI"),
    reason="needs Debian's docker-compose (.ci/run installs it)",
)
def test_compose_file_is_valid_for_debians_docker_compose() -> None:
    """docker-compose 1.29 (Debian's) reads the file, alone and with compose.local.yaml on top:
    no top-level ``name:`` and nothing else it refuses; Compose v2 reads the same files. The local
    stack leaves Grafana out (no Debian package) and adds the demo PACS."""
    for files in (["compose.yaml"], ["compose.yaml", "compose.local.yaml"]):
        result = subprocess.run(
            ["docker-compose", *(a for f in files for a in ("-f", str(DEPLOY / f))), "config"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        if len(files) == 2:
            assert services["grafana"]["profiles"] == ["grafana"]
            assert services["postgres"]["image"] == "cad-postgres:local"
            assert "pacs" in services
        else:
            assert "pacs" not in services and "profiles" not in services["grafana"]
        assert "name" not in yaml.safe_load((DEPLOY / files[-1]).read_text())


def test_kubernetes_manifests_validate_against_the_openapi_schemas() -> None:
    """Every manifest against the Kubernetes OpenAPI schemas bundled with kubernetes-validate
    (offline), strictly: an unknown or misplaced field fails."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    checked = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kubernetes_validate.validate(doc, version, strict=True)
                checked.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert {
        "StatefulSet/cad-server",
        "Deployment/cad-review-ui",
        "Service/cad-server",
        "PodDisruptionBudget/cad-server",
        "NetworkPolicy/cad-server",
        "Job/cad-rescore",
    } <= set(checked)
    (job,) = k8s_docs()["Job"]  # the pool's re-scoring shared by an Indexed Job's workers
    assert job["spec"]["completionMode"] == "Indexed"
    command = " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert f'--shard "${{JOB_COMPLETION_INDEX}}/{job["spec"]["completions"]}"' in command
    broken = next(yaml.safe_load_all((DEPLOY / "k8s" / "server.yaml").read_text()))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    broken = next(yaml.safe_load_all((DEPLOY / "k8s" / "server.yaml").read_text()))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def _env_names(cls: type) -> set[str]:
    return {f"CAD_{name.upper()}" for name in cls.model_fields}  # type: ignore[attr-defined]


def test_no_environment_variable_means_two_things() -> None:
    """Server and trainer share only the storage settings; the shared ConfigMap sets the
    server's inference batch without touching the trainer's training batch."""
    from trainer.settings import SHARED_ENV

    assert _env_names(ServerSettings) & _env_names(TrainerSettings) == SHARED_ENV
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())["data"]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in config.items():
            mp.setenv(key, str(value))
        mp.setenv("CAD_METRICS_PORT", "9464")
        assert ServerSettings().batch_size == int(config["CAD_BATCH_SIZE"]) == 32
        trainer = TrainerSettings()
        assert trainer.train_batch_size == 64 and trainer.watch_metrics_port == 9465
        mp.setenv("CAD_TRAIN_BATCH_SIZE", "16")
        assert TrainerSettings().train_batch_size == 16


def test_the_settings_reference_is_generated_from_the_code() -> None:
    import importlib.util
    import re

    path = ROOT / "scripts" / "gen_settings_docs.py"
    spec = importlib.util.spec_from_file_location("gen_settings_docs", path)
    gen = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(gen)  # type: ignore[union-attr]
    page = (ROOT / "docs" / "settings.md").read_text()
    assert gen.with_reference(page) == page, "run scripts/gen_settings_docs.py"
    # a shared group is declared once: no process declares a field of a group it does not use
    from cad.settings import ClientSettings, RegistrySettings, StoreSettings

    for group in (ClientSettings, RegistrySettings, StoreSettings):
        users = [c for _, c in gen._classes() if issubclass(c, group)]
        assert len(users) >= 2, group
        for _, cls in gen._classes():
            if not issubclass(cls, group) and cls.__name__ != "CliSettings":
                assert not set(group.model_fields) <= set(cls.model_fields), (cls, group)
    # ... and every CAD_* name the prose mentions is a real setting (or a prefix of some).
    known = {row[0] for row in gen.rows()}
    guides = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs" / "guides").glob("*.md"))]
    for doc in ("README.md", "docs/index.md", "docs/performance.md", "docs/results.md", *guides):
        for name in set(re.findall(r"CAD_[A-Z0-9_]+", (ROOT / doc).read_text())):
            assert name in known or any(k.startswith(name) for k in known if name.endswith("_")), (
                f"{doc} mentions {name}, which no settings class reads"
            )


def test_enum_like_settings_fail_at_start_with_the_allowed_values() -> None:
    import typing

    import pydantic

    from cad.aift import DEFAULT_VARIANT, VARIANTS
    from cad.aift.baselines import MARGIN
    from service.settings import ServerSettings
    from trainer.network import ARCHITECTURES
    from trainer.presets import PRESETS
    from trainer.settings import TrainerSettings

    for cls, field, bad in (
        (ServerSettings, "providers", "gpu"),
        (ServerSettings, "precision", "bf16"),
        (ServerSettings, "io_binding", "yes"),
        (TrainerSettings, "preset", "polyps"),
        (TrainerSettings, "architecture", "resnet"),
        (TrainerSettings, "rescore_order", "bald"),
    ):
        with pytest.raises(pydantic.ValidationError) as err:
            cls(**{field: bad})
        assert field in str(err.value) and "Input should be" in str(err.value)
    # The literal types name exactly what the code implements.
    assert set(typing.get_args(TrainerSettings.model_fields["preset"].annotation)) == set(PRESETS)
    assert typing.get_args(TrainerSettings.model_fields["architecture"].annotation) == ARCHITECTURES
    orders = set(typing.get_args(TrainerSettings.model_fields["rescore_order"].annotation))
    assert orders == {*VARIANTS, MARGIN}  # what a budgeted re-scoring can rank by
    assert TrainerSettings().rescore_order == DEFAULT_VARIANT


def test_no_module_reads_a_cad_variable_behind_the_settings_classes_back() -> None:
    import re

    direct = re.compile(r"(environ(\.get)?\(|getenv\(|environ\[)\s*[\"']CAD_")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("cad", "service", "trainer", "cadcli")
        for path in (ROOT / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line)
    ]
    assert offenders == []  # every CAD_* variable is a field of a settings class (documented)


def test_flags_reach_settings_one_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process turns its flags into settings through cad.settings.from_flags: a flag
    given wins over the environment, a flag left off (None, an unset store_true) does not, and
    0 is a value (port 0 picks a free one)."""
    import argparse

    from cad.settings import from_flags
    from cadcli.main import build_parser
    from cadcli.settings import trainer_settings
    from reviewui.settings import ReviewUiSettings
    from service.settings import ServerSettings

    monkeypatch.setenv("CAD_PORT", "6000")
    monkeypatch.setenv("CAD_METRICS_PORT", "7000")
    args = argparse.Namespace(port=0, metrics_port=None, registry="/models")
    server = from_flags(
        ServerSettings,
        args,
        {"port": "port", "metrics_port": "metrics_port", "registry": "registry_root"},
    )
    assert (server.port, server.metrics_port, str(server.registry_root)) == (0, 7000, "/models")
    monkeypatch.setenv("CAD_REVIEW_UI_SERVER", "cad:50051")
    ui = from_flags(
        ReviewUiSettings,
        argparse.Namespace(host="0.0.0.0", port=None, server=None),
        ("host", "port", "server"),
    )
    assert (ui.host, ui.port, ui.server) == ("0.0.0.0", 8080, "cad:50051")
    monkeypatch.setenv("CAD_SEED", "7")
    trainer = trainer_settings(
        build_parser().parse_args(
            ["train", "round", "--registry", "/r", "--batch-size", "16", "--hq"]
        )
    )
    assert (str(trainer.registry_root), trainer.train_batch_size, trainer.seed) == ("/r", 16, 7)
    assert trainer.hq and not trainer.allow_unvalidated
