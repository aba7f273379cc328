"""docs/operations.md's Python client example, run as an operator would copy it, against a real
server with authentication: the example must not drift from the API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from service.rpc.server import ServerThread
from support.helpers import make_settings, publish_tiny
from tests.review_world import TOKENS, png_bytes, token_file

ROOT = Path(__file__).resolve().parents[2]


def test_the_python_client_example_classifies_a_frame(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Calling the service", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    script = tmp_path / "classify.py"
    script.write_text(example)
    image = tmp_path / "frame.png"
    image.write_bytes(png_bytes())
    publish_tiny(tmp_path / "registry", tmp_path / "build")
    settings = make_settings(
        tmp_path / "registry", auth_tokens_file=token_file(tmp_path / "t.json")
    )
    with ServerThread(settings) as server:
        server.refresh_models()
        env = {
            **os.environ,
            "CAD_ADDRESS": server.address,
            "CAD_TOKEN": TOKENS["tower-3"],
            "CAD_IMAGE": str(image),
            "PYTHONPATH": str(ROOT),
        }
        run = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"c1 P\(finding\) = [01]\.\d{3} model v1\n", run.stdout), run.stdout
