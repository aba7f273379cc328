"""deploy/compose.yaml with deploy/compose.local.yaml started as a user starts it: a copy of
deploy/ with its secrets made here (owned by the uid that reads each, mode 0600, as compose's
file secrets are bind mounts), ports the kernel picks on 127.0.0.1, `docker-compose up`, and
`down -v` at the end."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.tls import make_named_pki

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
CAD_UID, POSTGRES_UID, ORTHANC_UID = 10001, 999, 997
"""Who reads the secrets: the CAD images, the PostgreSQL and the Orthanc stand-ins."""
PUBLISHED = {
    "CAD_SERVER_PORT": ("server", 50051),
    "CAD_REVIEW_UI_PORT": ("review-ui", 8080),
    "CAD_GATEWAY_PORT": ("dicom-gateway", 11112),
    "CAD_PROMETHEUS_PORT": ("prometheus", 9090),
    "CAD_PACS_DICOM_PORT": ("pacs", 4242),
    "CAD_PACS_HTTP_PORT": ("pacs", 8042),
}


@dataclass
class Stack:
    folder: Path
    env: dict[str, str]
    project: str = "cadsmoke"
    tokens: dict[str, str] = field(default_factory=dict)
    orthanc_password: str = ""

    @property
    def files(self) -> list[str]:
        deploy = self.folder / "deploy"
        return ["-f", str(deploy / "compose.yaml"), "-f", str(deploy / "compose.local.yaml")]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        result = subprocess.run(
            ["docker-compose", "-p", self.project, *self.files, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}: {result.stderr[-3000:]}{result.stdout[-2000:]}"
            )
        return result.stdout.strip()

    def port(self, service: str, port: int) -> int:
        """The host port on 127.0.0.1 that ``service``'s ``port`` was published on."""
        address = self.compose("port", service, str(port), timeout=60)
        return int(address.rsplit(":", 1)[1])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "40", timeout=120, check=False)


def _secret(path: Path, data: str | bytes, uid: int) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, uid, uid)
    path.chmod(0o600)


def prepare(folder: Path, docker_env: dict[str, str]) -> Stack:
    """A copy of deploy/ under ``folder`` with every secret the two compose files name."""
    deploy = folder / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("k8s", "secrets"))
    # the copy is read by containers running as other users (bind mounts)
    for path in [folder, *deploy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    made = deploy / "secrets"
    made.mkdir(mode=0o755)
    pki = folder / "pki"
    make_named_pki(pki, {"server": ["cad-server"], "review-ui": ["localhost", "127.0.0.1"]})
    for name in ("server.pem", "server.key", "review-ui.pem", "review-ui.key"):
        _secret(made / name, (pki / name).read_bytes(), CAD_UID)
    _secret(made / "ca.pem", (pki / "ca.pem").read_bytes(), CAD_UID)
    tokens = {who: secrets.token_urlsafe(32) for who in ("dicom-gateway", "dr.compose", "ops")}
    roles = {"dicom-gateway": ["infer"], "dr.compose": ["review"], "ops": ["admin"]}
    table = [
        {"identity": who, "roles": roles[who], "sha256": hashlib.sha256(t.encode()).hexdigest()}
        for who, t in tokens.items()
    ]
    _secret(made / "tokens.json", json.dumps({"tokens": table}), CAD_UID)
    _secret(made / "gateway-token", tokens["dicom-gateway"], CAD_UID)
    _secret(made / "uid_hash_key", secrets.token_bytes(32), CAD_UID)
    password = secrets.token_urlsafe(24)
    _secret(made / "postgres_password", password, POSTGRES_UID)
    _secret(made / "pgpass", f"postgres:5432:cad:cad:{password}\n", CAD_UID)
    _secret(made / "grafana_admin_password", secrets.token_urlsafe(16), CAD_UID)
    orthanc = secrets.token_urlsafe(16)
    _secret(
        made / "orthanc-users.json",
        json.dumps({"RegisteredUsers": {"cad": orthanc}}),
        ORTHANC_UID,
    )
    env = {**docker_env, "CAD_PUBLISH_ADDRESS": "127.0.0.1"}
    env.update(dict.fromkeys(PUBLISHED, ""))  # "" publishes on a port the kernel picks
    return Stack(folder, env, tokens=tokens, orthanc_password=orthanc)
