"""Start ``cad-server`` as a child process and wait until it serves (tests, benchmarks, demos)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


@contextmanager
def server_process(
    env: dict[str, str],
    timeout_s: float = 120.0,
    log_lines: list[str] | None = None,
    tree: Path = ROOT,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real server on a free port with ``env`` (``CAD_*`` settings); yields (process, address)
    once its health check says SERVING. Killed on exit. ``log_lines`` collects its log. ``tree``:
    the checkout whose ``service`` package runs (another revision's, for A/B comparisons)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.rpc.server", "--port", "0", "--metrics-port", "-1"],
        cwd=tree,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.put(line)
            if log_lines is not None:
                log_lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty:
                raise RuntimeError(f"the server did not start within {timeout_s:.0f} s") from None
            match = LISTENING.search(line)
            if match:
                break
        address = f"127.0.0.1:{match.group(1)}"
        with grpc.insecure_channel(address) as channel:  # wait until a model is loaded
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
            for update in watch:
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    watch.cancel()
                    break
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
