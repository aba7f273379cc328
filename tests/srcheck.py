"""Third-party validation of the SRs the gateway writes: dicom3tools' ``dciodvfy`` (the IOD),
dcmtk's ``dsrdump`` (it must parse the document tree) and pixelmed's ``DicomSRValidator``
(TID 1500, the template). ``.ci/run`` installs the three (``dicom3tools``, ``dcmtk``,
``pixelmed-apps``); elsewhere a missing one is skipped unless ``CI`` is set.

Only errors count: warnings about the source image's own attributes (a zero Patient's Weight in
pydicom's test CT, say) are the sender's, not the gateway's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
JAVA_XML_LIMITS = [  # Java 17's XPath limits stop pixelmed's stylesheets (Debian's pixelmed 2022)
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
]


def tools() -> dict[str, bool]:
    return {
        "dciodvfy": shutil.which("dciodvfy") is not None,
        "dsrdump": shutil.which("dsrdump") is not None,
        "pixelmed": PIXELMED_JAR.exists() and shutil.which("java") is not None,
    }


def sr_problems(paths: list[Path]) -> list[str]:
    """Every error the validators find in the SR files at ``paths`` (empty: all valid)."""
    have = tools()
    if not all(have.values()):
        missing = [name for name, ok in have.items() if not ok]
        if os.environ.get("CI"):
            raise AssertionError(f"SR validators missing in CI: {missing}")
        return []  # a developer machine without them: nothing checked here
    problems: list[str] = []
    for path in paths:
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        problems += [
            f"dciodvfy {path.name}: {line}"
            for line in (out.stdout + out.stderr).splitlines()
            if line.startswith("Error")
        ]
        dump = subprocess.run(["dsrdump", "-q", str(path)], capture_output=True, text=True)
        if dump.returncode != 0:
            problems.append(f"dsrdump {path.name}: exit {dump.returncode}: {dump.stderr[-300:]}")
    if paths:
        run = subprocess.run(
            [
                "java",
                *JAVA_XML_LIMITS,
                "-cp",
                str(PIXELMED_JAR),
                str(HERE / "validators" / "ValidateSRs.java"),
                *map(str, paths),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if run.returncode != 0:
            problems.append(f"DicomSRValidator failed: {run.stderr[-500:]}")
        current = ""
        for line in run.stdout.splitlines():
            if line.startswith("=== "):
                current = Path(line[4:]).name
            elif line.startswith("Error"):
                problems.append(f"DicomSRValidator {current}: {line}")
        if run.stdout.count("IOD validation complete") != len(paths):
            problems.append(f"DicomSRValidator did not finish every file: {run.stdout[-500:]}")
    return problems
