"""The server and the domain it serves never import torch or the trainer: serving images carry
no PyTorch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from support.helpers import publish_tiny

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "torchvision", "trainer", "cadcli")


def test_no_module_of_service_or_the_domain_imports_torch_or_trainer() -> None:
    offenders = []
    for path in [*(ROOT / "service").rglob("*.py"), *(ROOT / "cad").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []


def test_server_runs_with_torch_made_unimportable(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    publish_tiny(root, tmp_path / "build")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {FORBIDDEN!r}:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
        import grpc
        from service.api.cad.v1 import cad_pb2, cad_pb2_grpc
        from service.rpc.server import ServerThread
        from service.settings import ServerSettings

        settings = ServerSettings(registry_root={str(root)!r}, host="127.0.0.1", port=0,
                                  metrics_port=-1, poll_interval_s=3600,
                                  store_url="sqlite:///{tmp_path}/labels.sqlite3",
                                  archive_root={str(tmp_path / "archive")!r})
        with ServerThread(settings) as server:
            server.refresh_models()
            assert server.server.models.current is not None
            with grpc.insecure_channel(server.address) as ch:
                raw = cad_pb2.RawImage(height=8, width=8, channels=1,
                                       pixel_type=cad_pb2.RawImage.UINT8, pixels=bytes(64))
                box = cad_pb2.Box(x=0, y=0, width=8, height=8)
                r = cad_pb2_grpc.CadInferenceStub(ch).Classify(
                    cad_pb2.ClassifyRequest(raw=raw, candidates=[cad_pb2.Candidate(box=box)]), timeout=30)
                assert r.results[0].patches == 24
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        assert not loaded, loaded
        print("OK without torch")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "OK without torch" in result.stdout
    # A CPU-only machine starts cleanly: no CUDA provider load errors.
    assert "libcuda" not in result.stderr and "CUDAExecutionProvider" not in result.stderr
