"""The images built and run for real, air-gapped: a private dockerd, a base image made with
debootstrap, deploy/build-local.sh building with the host's pip configuration, then the server
container classifying over 127.0.0.1, reporting healthy, and NOT_SERVING without a model.

Needs root, Debian's docker.io and debootstrap (.ci/run installs them); skipped elsewhere
outside CI. Everything it starts it stops; everything it makes is under one temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom import dcmread
from pydicom.data import get_testdata_file

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from tests.review_http import Browser
from tests.review_world import png_bytes
from tests.stack import prepare

ROOT = Path(__file__).resolve().parents[2]
DOCKER = "/usr/bin/docker"  # Debian's client: it drives the daemon's built-in BuildKit
TOOLS = all(Path(p).exists() for p in (DOCKER, "/usr/sbin/dockerd", "/usr/sbin/debootstrap"))
CAN = TOOLS and os.geteuid() == 0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CAN and not os.environ.get("CI"),
        reason="needs root, docker.io and debootstrap (.ci/run installs them)",
    ),
    pytest.mark.timeout(1800),
]


TARGETS = ("server", "trainer", "review-ui", "dicom-gateway", "postgres", "prometheus", "pacs")
"""The images deploy/compose.yaml with deploy/compose.local.yaml runs."""


@dataclass
class Docker:
    env: dict[str, str]
    work: Path

    def answers(self) -> bool:
        """The daemon's API answers (``docker info`` prints its client part even when not)."""
        probe = subprocess.run(
            [DOCKER, "version", "--format", "{{.Server.Version}}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return probe.returncode == 0 and bool(probe.stdout.strip())

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        result = subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    assert CAN, "the container tests need root, docker.io and debootstrap"
    work = Path(tempfile.mkdtemp(prefix="cad-dk-", dir="/tmp"))  # short: a unix socket lives here
    sock = work / "docker.sock"
    log = (work / "dockerd.log").open("wb")
    daemon = subprocess.Popen(
        [
            "/usr/sbin/dockerd",
            "--data-root",
            str(work / "root"),
            "--exec-root",
            str(work / "exec"),
            "--pidfile",
            str(work / "dockerd.pid"),
            "-H",
            f"unix://{sock}",
            "--storage-driver",
            "overlay2",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    env.pop("DOCKER_CONTEXT", None)
    client = Docker(env, work)
    try:
        deadline = time.monotonic() + 120
        while not client.answers():
            assert daemon.poll() is None, (work / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "dockerd did not answer within 120 s"
            time.sleep(0.5)  # polling an external process we started until its API answers
        yield client
    finally:
        containers = client("ps", "-aq", check=False).split()
        if containers:
            client("rm", "-f", *containers, check=False)
        daemon.terminate()
        daemon.wait(60)
        log.close()
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def unmount_below(folder: Path) -> None:
    """Unmount what a stopped dockerd left mounted under ``folder`` (its netns bind mount)."""
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh if line.split()[1].startswith(f"{folder}/")]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def images(docker: Docker) -> dict[str, str]:
    """Every image deploy/compose.local.yaml runs, built by deploy/build-local.sh into the private
    daemon: the CAD images and the Debian-built PostgreSQL, Prometheus and demo PACS."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build-local.sh")],
        env={**docker.env, "BUILD_TARGETS": " ".join(TARGETS), "BUILD_TAG": "test"},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    print(f"the base and {len(TARGETS)} images in {time.monotonic() - started:.0f} s")
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
    print(listed)
    for target in TARGETS:
        assert f"cad-{target}:test" in listed, listed
    return {target: f"cad-{target}:test" for target in TARGETS}


@pytest.fixture(scope="module")
def server_image(images: dict[str, str]) -> str:
    return images["server"]


def run_server(docker: Docker, image: str, registry: Path, port: int) -> str:
    return docker(
        "run",
        "-d",
        "--network",
        "host",
        "-e",
        f"CAD_PORT={port}",
        "-e",
        "CAD_HOST=127.0.0.1",
        "-e",
        f"CAD_METRICS_PORT={free_port()}",
        "-e",
        "CAD_METRICS_HOST=127.0.0.1",
        "-v",
        f"{registry}:/models:ro",
        image,
    )


def wait_for(condition: object, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)  # polling a container (an external process) until it answers


def test_the_server_image_is_small_non_root_and_without_torch(
    docker: Docker, server_image: str
) -> None:
    info = json.loads(docker("image", "inspect", server_image))[0]
    assert info["Config"]["User"] == "10001"
    assert "service.rpc.healthcheck" in " ".join(info["Config"]["Healthcheck"]["Test"])
    print(f"{server_image}: {info['Size'] / 1e6:.0f} MB")
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)"
    assert docker("run", "--rm", "--entrypoint", "python", server_image, "-c", probe) == "None True"
    assert docker("run", "--rm", "--entrypoint", "id", server_image, "-u") == "10001"
    gateway = docker("run", "--rm", "--entrypoint", "cad", server_image, "dicom-gateway", "--help")
    assert "C-STORE" in gateway  # the DICOM gateway ships in the CPU images (its own target too)
    left = docker("run", "--rm", "--entrypoint", "sh", server_image, "-c", "ls -A /wheels | wc -l")
    assert left == "0"  # the wheels were mounted for the install, never copied into a layer


def test_the_trainer_image_bootstraps_a_model_the_server_container_serves(
    docker: Docker, images: dict[str, str], tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    os.chown(registry, 10001, 10001)  # the images run as uid 10001
    init = docker(
        "run",
        "--rm",
        "--network",
        "host",
        "-v",
        f"{registry}:/models",
        images["trainer"],
        "model",
        "init",
        "--arch",
        "squeezenet1_0",
        "--input-size",
        "64",
        timeout=600,
    )
    assert "published cad version 1 (squeezenet1_0)" in init and "pretrained: imagenet" in init
    port = free_port()
    container = run_server(docker, images["server"], registry, port)

    def healthy() -> bool:
        state = json.loads(docker("inspect", container))[0]["State"]
        assert state["Status"] == "running", docker("logs", container, check=False)
        return bool(state["Health"]["Status"] == "healthy")

    wait_for(healthy, "Docker's health status healthy")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = cad_pb2_grpc.CadInferenceStub(channel).Classify(
            cad_pb2.ClassifyRequest(
                encoded=png_bytes(),
                candidates=[
                    cad_pb2.Candidate(
                        client_id="a", box=cad_pb2.Box(x=40, y=30, width=40, height=30)
                    )
                ],
            ),
            timeout=60,
        )
        model = cad_pb2_grpc.ModelAdminStub(channel).GetModel(cad_pb2.GetModelRequest(), timeout=30)
    assert reply.model_version == "1" and len(reply.results) == 1
    assert 0.0 <= reply.results[0].probability <= 1.0
    assert json.loads(model.manifest_json)["architecture"] == "squeezenet1_0"
    assert model.execution_provider == "CPUExecutionProvider"
    docker("rm", "-f", container)


def test_a_server_container_without_a_model_is_not_serving(
    docker: Docker, server_image: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-registry"
    empty.mkdir()
    tmp_path.chmod(0o755)
    empty.chmod(0o755)
    port = free_port()
    container = run_server(docker, server_image, empty, port)
    answer: list[int] = []

    def answers() -> bool:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
        except grpc.RpcError:
            return False
        answer.append(reply.status)
        return True

    wait_for(answers, "the gRPC health service", timeout=120)
    assert answer[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
    probe = docker("exec", container, "python", "-m", "service.rpc.healthcheck", check=False)
    assert "NOT_SERVING" in probe
    logs = subprocess.run(
        [DOCKER, "logs", container], env=docker.env, capture_output=True, text=True, timeout=60
    )
    assert "no versions" in logs.stdout + logs.stderr  # and it says why
    docker("rm", "-f", container)


def test_the_compose_stack_classifies_through_the_pacs_takes_a_correction_and_is_scraped(
    docker: Docker, images: dict[str, str], tmp_path: Path
) -> None:
    """deploy/compose.yaml with deploy/compose.local.yaml, as a user starts it (`docker-compose up`,
    Debian's 1.29): PostgreSQL, the model's first version, the server, the trainer, the review
    page, the gateway with a demo Orthanc, Prometheus. From outside: an image stored in the PACS
    comes back as an SR in its study; a reviewer signs in to the page over HTTPS, is served the
    image's candidate and dismisses it; Prometheus has scraped the three CAD processes and counts
    the SR and the correction. Then `down -v`."""
    assert shutil.which("docker-compose"), "needs Debian's docker-compose (.ci/run installs it)"
    for target, image in images.items():  # the compose files name the :local tags
        docker("tag", image, f"cad-{target}:local")
    stack = prepare(tmp_path, docker.env)
    try:
        stack.compose("up", "-d", "--no-build")

        def healthy() -> bool:
            listed = stack.compose("ps", timeout=60)
            assert "Exit 1" not in listed and "Restarting" not in listed, listed + stack.logs()
            return (
                all(
                    f"_{s}_1" in line and "(healthy)" in line
                    for s in ("server", "review-ui", "postgres")
                    for line in listed.splitlines()
                    if f"_{s}_1 " in line
                )
                and listed.count("(healthy)") == 3
            )

        wait_for(healthy, "the server, the review page and PostgreSQL healthy", timeout=300)
        # a modality stores a CT slice in the PACS; the routing sends it to the gateway
        pacs = f"http://127.0.0.1:{stack.port('pacs', 8042)}"
        auth = "Basic " + base64.b64encode(f"cad:{stack.orthanc_password}".encode()).decode()

        def orthanc(path: str, body: bytes | None = None) -> Any:
            request = urllib.request.Request(
                pacs + path, data=body, headers={"Authorization": auth}
            )
            with urllib.request.urlopen(request, timeout=30) as reply:
                return json.loads(reply.read())

        ct = dcmread(get_testdata_file("CT_small.dcm"))
        stored = orthanc("/instances", Path(get_testdata_file("CT_small.dcm")).read_bytes())
        assert stored["Status"] == "Success"
        find = json.dumps({"Level": "Instance", "Query": {"Modality": "SR"}}).encode()
        wait_for(lambda: orthanc("/tools/find", find), "the SR back in the PACS", timeout=180)
        (sr_id,) = orthanc("/tools/find", find)
        tags = orthanc(f"/instances/{sr_id}/simplified-tags")
        assert tags["StudyInstanceUID"] == ct.StudyInstanceUID  # in the image's own study
        assert tags["ContentTemplateSequence"][0]["TemplateIdentifier"] == "1500"

        # a reviewer on the review page, over HTTPS with the stack's own CA
        tls = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.pem"))
        page = Browser(f"https://127.0.0.1:{stack.port('review-ui', 8080)}", tls=tls)
        status, headers, _ = page.sign_in(stack.tokens["dr.compose"])
        assert status == 303 and headers["location"] == "/"
        csrf = page.page_csrf()
        status, queue = page.api("/api/queue?limit=10")
        assert status == 200 and len(queue["items"]) == 1, queue
        (item,) = queue["items"]
        assert page.request("GET", f"/api/image/{item['request_id']}/png")[0] == 200
        body = {
            "candidate_id": item["candidate_id"],
            "request_id": item["request_id"],
            "verdict": "dismiss",
            "key": "compose-smoke-1",
        }
        status, receipt = page.api("/api/verdict", body, **{"X-CSRF-Token": csrf})
        assert status == 200 and receipt["label"] == "no finding", receipt

        # Prometheus scraped the server, the trainer and the gateway, and counts both
        prometheus = f"http://127.0.0.1:{stack.port('prometheus', 9090)}"

        def query(expr: str) -> float:
            url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
            with urllib.request.urlopen(url, timeout=30) as reply:
                result = json.loads(reply.read())["data"]["result"]
            return sum(float(r["value"][1]) for r in result)

        wanted = {
            "count(up == 1)": 3.0,
            "sum(cad_gateway_srs_sent_total)": 1.0,
            'sum(cad_corrections_total{verdict="false_positive"})': 1.0,
        }
        seen: dict[str, float] = {}

        def scraped() -> bool:
            seen.update({expr: query(expr) for expr in wanted})
            return all(seen[expr] >= n for expr, n in wanted.items())

        wait_for(scraped, "Prometheus to scrape the counts", timeout=120)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
