"""``python -m service.healthcheck``: exit 0 if the server's gRPC health says SERVING.

Used by the container HEALTHCHECK and usable as a Kubernetes exec probe.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default=f"127.0.0.1:{os.environ.get('CAD_PORT', '50051')}")
    parser.add_argument("--service", default="", help="service name; empty = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0)
    env = os.environ.get
    parser.add_argument("--tls-ca", default=env("CAD_HEALTHCHECK_TLS_CA"),
                        help="PEM CA that signed the server certificate: connect with TLS")
    parser.add_argument("--tls-server-name", default=env("CAD_HEALTHCHECK_TLS_SERVER_NAME"),
                        help="name in the server certificate, when it is not the address's host")
    parser.add_argument("--tls-cert", default=env("CAD_HEALTHCHECK_TLS_CERT"), help="client certificate (mTLS)")
    parser.add_argument("--tls-key", default=env("CAD_HEALTHCHECK_TLS_KEY"), help="client key (mTLS)")
    parser.add_argument("--token-file", default=env("CAD_HEALTHCHECK_TOKEN_FILE"),
                        help="file holding a bearer token (when health checks are closed)")
    args = parser.parse_args(argv)
    metadata = []
    if args.token_file:
        metadata.append(("authorization", f"Bearer {Path(args.token_file).read_text().strip()}"))
    try:
        if args.tls_ca:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(args.tls_ca).read_bytes(),
                private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
                certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
            )
            options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
            channel = grpc.secure_channel(args.address, creds, options=options)
        else:
            channel = grpc.insecure_channel(args.address)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout,
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
