"""What every benchmark shares: its report written as JSON, another revision checked out beside
this one (the servers themselves start through :mod:`support.launch`)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


def emit(report: dict[str, object], out: Path | None) -> None:
    """Print a benchmark's JSON report, and write it to ``out`` when given."""
    import json

    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")


@contextmanager
def revision_tree(ref: str, where: Path) -> Iterator[Path]:
    """Revision ``ref`` of this repository checked out at ``where`` (a git worktree, removed on
    exit): the baseline a benchmark runs beside this checkout."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
            capture_output=True,
        )
