"""Generated gRPC code is committed and must match a fresh generation from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "api"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = ROOT / "service" / "api"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    existing = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == existing
    stale = [
        str(rel) for rel in fresh if (out / rel).read_bytes() != (committed / rel).read_bytes()
    ]
    assert stale == [], f"regenerate with `python scripts/gen_protos.py`: {stale}"
