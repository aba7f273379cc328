"""The documentation site builds without a warning (a broken link, an anchor that is not there,
a page left out of the navigation), its reference pages are what the code generates today, and
README stays the newcomer's page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README_MAX_BYTES = 8 * 1024


def build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of the project in ``project`` into ``site``."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_site_builds_strict(tmp_path: Path) -> None:
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The check bites: the same site with one link to a page that does not exist."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the guide](guides/nowhere.md).\n")
    config = (ROOT / "mkdocs.yml").read_text().split("\nnav:")[0]
    (tmp_path / "mkdocs.yml").write_text(config + "\nnav:\n  - Home: index.md\n")
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0 and "guides/nowhere.md" in result.stderr


def test_the_reference_pages_are_what_the_code_generates() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_reference_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert gen_reference_docs.main(["--check"]) == 0, "run python scripts/gen_reference_docs.py"
    api = (ROOT / "docs" / "reference" / "api.md").read_text()
    for call in ("Classify", "ClassifyStream", "ClassifyVolume", "SubmitCorrection", "PinVersion"):
        assert f"| `{call}` |" in api
    metrics = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    for name in ("cad_grpc_requests", "cad_gateway_srs_sent", "cad_trainer_rounds"):
        assert f"`{name}`" in metrics


def test_readme_is_the_newcomers_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_MAX_BYTES, len(readme.encode())
    assert readme.count("```bash") == 2  # the two commands, and nothing else to run
    assert "docs/index.md" in readme and "mkdocs" in readme
