"""``python -m service.rpc.healthcheck``: exit 0 if the server's gRPC health says SERVING.

Used by the container HEALTHCHECK and usable as a Kubernetes exec probe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.rpc.channel import client_channel


class HealthcheckSettings(BaseSettings):
    """The probe's defaults: ``CAD_HEALTHCHECK_*``, and the server's own ``CAD_PORT``."""

    model_config = SettingsConfigDict(env_prefix="CAD_HEALTHCHECK_", extra="ignore")

    port: int = Field(
        50051, validation_alias="CAD_PORT", description="The server's gRPC port (as the server's)."
    )
    tls_ca: Path | None = Field(
        None, description="PEM CA that signed the server certificate: connect with TLS."
    )
    tls_server_name: str | None = Field(
        None, description="Name in the server certificate, when not the host."
    )
    tls_cert: Path | None = Field(None, description="Client certificate (mutual TLS).")
    tls_key: Path | None = Field(None, description="Client key (mutual TLS).")
    token_file: Path | None = Field(
        None, description="File holding a bearer token (when health checks are closed)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    env = HealthcheckSettings()
    parser.add_argument("--address", default=f"127.0.0.1:{env.port}")
    parser.add_argument("--service", default="", help="service name; empty = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0)
    for name, field in HealthcheckSettings.model_fields.items():
        if name != "port":
            parser.add_argument(
                f"--{name.replace('_', '-')}", default=getattr(env, name), help=field.description
            )
    args = parser.parse_args(argv)
    metadata = []
    if args.token_file:
        metadata.append(("authorization", f"Bearer {Path(args.token_file).read_text().strip()}"))
    try:
        channel = client_channel(
            args.address,
            Path(args.tls_ca) if args.tls_ca else None,
            args.tls_server_name,
            Path(args.tls_cert) if args.tls_cert else None,
            Path(args.tls_key) if args.tls_key else None,
        )
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                metadata=metadata or None,
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())
