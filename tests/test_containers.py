"""The images built and run for real, air-gapped: a private dockerd, a base image made with
debootstrap, deploy/build-local.sh building with the host's pip configuration, then the server
container classifying over 127.0.0.1, reporting healthy, and NOT_SERVING without a model.

Needs root, Debian's docker.io and debootstrap (.ci/run installs them); skipped elsewhere
outside CI. Everything it starts it stops; everything it makes is under one temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
from tests.review_world import png_bytes

ROOT = Path(__file__).resolve().parent.parent
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
    """The server and trainer images, built by deploy/build-local.sh into the private daemon."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build-local.sh")],
        env={**docker.env, "BUILD_TARGETS": "server trainer", "BUILD_TAG": "test"},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(result.stdout)
    print(f"base, server and trainer images in {time.monotonic() - started:.0f} s")
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}")
    print(listed)
    assert "cad-server:test" in listed and "cad-trainer:test" in listed, listed
    return {"server": "cad-server:test", "trainer": "cad-trainer:test"}


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
