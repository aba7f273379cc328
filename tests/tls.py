"""Throw-away PKI for TLS tests, made with the openssl command line tool (no network)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A second CA that signed nothing the server trusts."""


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=d,
    )


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=d,
    )
    _run(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=d,
    )


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "test-ca")
    _ca(d, "other-ca")
    _leaf(
        d,
        "server",
        "test-ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _leaf(d, "client", "test-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(
        d / "test-ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "other-ca.pem",
    )


def make_named_pki(d: Path, leaves: dict[str, list[str]]) -> Path:
    """A CA (``ca.pem``) and, for each leaf, ``<leaf>.pem``/``<leaf>.key``, a server certificate
    for the given DNS names and IP addresses. Returns the CA's path."""
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    for leaf, names in leaves.items():
        sans = ",".join(f"IP:{n}" if n[0].isdigit() else f"DNS:{n}" for n in names)
        _leaf(d, leaf, "ca", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
    return d / "ca.pem"
