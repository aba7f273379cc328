"""README command 1: the demo runs the whole loop and shuts down cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env_home = {"TORCH_HOME": str(tmp_path / "torch-home")}
    import os

    result = subprocess.run(
        [sys.executable, "-m", "cadcli.main", "demo", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env_home},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]", "demo done"):
        assert step in out
    assert "CT slice: model v1, recipe polyp" in out
    assert out.count("(model v1)") == 8
    assert "cad_candidates_total 14.0" in out  # 3 CT + 8 video + the CT again on v2
    # an ImageNet start the machine has, said which: the queue's order means something
    assert "ImageNet SqueezeNet v1.0, shipped with the package" in out  # no hub cache here
    assert "pretrained: imagenet" in out and "RANDOM INITIALISATION" not in result.stderr
    ct_rows = [line.split() for line in out.splitlines() if line.strip().startswith("ct-")][:3]
    probabilities = {row[2] for row in ct_rows}
    diversities = {row[5] for row in ct_rows}
    assert len(ct_rows) == 3 and len(probabilities) == 3 and len(diversities) > 1, ct_rows
    assert "MISSED FINDING on the CT slice" in out and out.count("origin=") == 4
    assert 'cad_corrections_total{verdict="false_positive"} 2.0' in out
    assert "round: published (v2, parent v1)" in out
    assert "the same CT request is now answered by model v2" in out
    assert "cad review-ui --server" in out  # where reviewers do step 5 for real
