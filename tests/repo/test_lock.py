"""Installs are reproducible: constraints.txt is the lock, and every install path uses it.

A fresh machine next month must install what CI tested, whatever a registry has published
since; these tests fail when the lock and pyproject.toml drift apart, when an install path
forgets the lock, or when this environment was installed without it.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and ";" not in version, f"not an exact pin in the lock: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_declared_dependency_is_pinned_in_the_lock_within_its_range() -> None:
    project = pyproject()["project"]
    declared = list(project["dependencies"])
    for extra in ("train", "dev"):
        declared += project["optional-dependencies"][extra]
    extra_in = (ROOT / "scripts" / "lock-extra.in").read_text().splitlines()
    declared += [line for line in extra_in if line.strip() and not line.startswith("#")]
    pins = locked()
    problems = []
    for text in declared:
        req = Requirement(text)
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: locked {version} is outside {req.specifier}")
    assert not problems, "run scripts/lock.sh: " + "; ".join(problems)


def test_the_cpu_images_onnxruntime_is_the_same_release_as_onnxruntime_gpu() -> None:
    pins = locked()
    assert pins["onnxruntime"] == pins["onnxruntime-gpu"]


def test_the_build_backend_is_pinned_to_the_locked_release() -> None:
    requires = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    pins = locked()
    for req in requires:
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"build requirement not pinned: {req}"
        assert pins.get(canonicalize_name(req.name)) == specs[0].version, req


def test_this_environment_was_installed_from_the_lock() -> None:
    """Every locked package that is installed here has the locked release (else: reinstall with
    `pip install -c constraints.txt ...`, as README's commands do)."""
    pins = locked()
    off = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        want = pins.get(name)
        have = dist.version.split("+", 1)[0]  # torch's local build label (+cpu) is the same release
        if want is not None and have != want:
            off.append(f"{name} {dist.version} (locked {want})")
    assert not off, "installed without constraints.txt: " + ", ".join(sorted(off))


def pip_installs(text: str) -> list[str]:
    """Each `pip install` command in a shell-like text, continuation lines joined."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", code)
    return [m.group(0) for m in re.finditer(r"pip install[^\n&;]*", joined)]


def test_every_install_path_uses_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    commands = {
        "README": [c for c in pip_installs(readme) if "-e '." in c],
        ".ci/run": pip_installs(ci),
        "Dockerfile": [  # a --no-deps install resolves nothing
            c for c in pip_installs(dockerfile) if "uninstall" not in c and "--no-deps" not in c
        ],
    }
    assert len(commands["README"]) == 2 and len(commands[".ci/run"]) == 1, commands
    assert len(commands["Dockerfile"]) == 6, commands["Dockerfile"]
    for where, found in commands.items():
        for command in found:
            assert "-c constraints.txt" in command or "-c /wheels/constraints.txt" in command, (
                where,
                command,
            )
    # the README's two commands are the ones CI runs
    test_command = next(c for c in readme.splitlines() if "pytest" in c and "pip install" in c)
    assert test_command.strip() in ci
    assert "constraints.txt" in (ROOT / ".dockerignore").read_text()


def test_the_generated_grpc_code_was_made_by_the_locked_grpcio_tools() -> None:
    text = (ROOT / "service" / "api" / "cad" / "v1" / "cad_pb2_grpc.py").read_text()
    generated = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    assert generated is not None
    assert generated.group(1) == locked()["grpcio-tools"]
