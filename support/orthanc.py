"""A real Orthanc PACS (Debian's ``orthanc``) for the tests: its own configuration and storage
in a temporary folder, on free loopback ports, routing every image it stores (never an SR) to
the CAD gateway by a Lua script."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ORTHANC = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
)
EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "orthanc"
"""The Orthanc example configuration and routing scripts of deploy/orthanc."""
DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
"""Debian's orthanc-dicomweb: STOW-RS, QIDO-RS and WADO-RS under /dicom-web/."""
ROUTE = (EXAMPLE / "route.lua").read_text()
ROUTE_WITH_REPORTS = (EXAMPLE / "route-with-reports.lua").read_text()
"""Images and other CADs' SRs to the gateway (its own SRs stay)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """One Orthanc process; ``start``/``stop`` may be called again (a PACS restart)."""

    def __init__(
        self,
        folder: Path,
        gateway_port: int,
        ae_title: str = "ORTHANC",
        route: str = ROUTE,
        dicomweb: bool = False,
    ) -> None:
        self.folder, self.ae_title = folder, ae_title
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "route.lua").write_text(route)
        config = {
            "Name": "cad-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"cadgw": ["CADGW", "127.0.0.1", gateway_port]},
            "LuaScripts": [str(folder / "route.lua")],
            "Plugins": [DICOMWEB] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 60) -> Orthanc:
        assert ORTHANC is not None, "install Debian's orthanc"
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.folder / "orthanc.json")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Orthanc did not start: "
                        + (self.folder / "orthanc.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, body: bytes | dict[str, Any]) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def qido(self, path: str) -> list[dict[str, Any]]:
        """A QIDO-RS search (``/dicom-web/...``), its DICOM JSON."""
        request = urllib.request.Request(
            self.url + "/dicom-web" + path, headers={"Accept": "application/dicom+json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body.strip() else []

    def reports(self) -> list[bytes]:
        """Every SR instance Orthanc holds, as DICOM files."""
        series = self.post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}})
        files = []
        for s in series:
            for instance in self.get(f"/series/{s}/instances"):
                files.append(self.get(f"/instances/{instance['ID']}/file"))
        return files


def c_echo(port: int, ae_title: str = "CADGW") -> int:
    """C-ECHO the gateway as a PACS checking the node would; its status."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def c_store(port: int, ds: object, ae_title: str = "CADGW") -> int:
    """Send one instance to the gateway as a modality would; its status."""
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title="TESTSCU")
    ae.requested_contexts = StoragePresentationContexts
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()
