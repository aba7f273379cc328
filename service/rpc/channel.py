"""A gRPC client channel to the server, plain or TLS (mutual TLS with a client certificate).

The one way the product's own clients connect: the container health check and the review UI.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def client_channel(
    address: str,
    tls_ca: Path | None = None,
    tls_server_name: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls_ca`` is given, trusting that CA.

    Raises:
        OSError: a certificate or key file cannot be read.
    """
    # Every address a name resolves to, in turn: with a headless Kubernetes Service
    # (dns:///cad-server.cad.svc:50051) calls spread over the ready replicas instead of sticking
    # to one for the life of the connection.
    options: list[tuple[str, str]] = [("grpc.lb_policy_name", "round_robin")]
    if tls_ca is None:
        return grpc.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes(),
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return grpc.secure_channel(address, creds, options=options)
