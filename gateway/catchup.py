"""Catching up with what the PACS stored while the gateway could not take it.

Orthanc's routing (``deploy/orthanc/route.lua``) pushes each stored image once, by C-STORE: an
image stored while the gateway is down, restarting or killed mid-burst is never pushed again.
Orthanc has no retrying route: ``SendToModality`` in Lua is one synchronous try, and its jobs are
not retried by themselves (resubmitting from ``OnJobFailure`` loops with no back-off). DICOM
query/retrieve has no "since" cursor either, so a C-FIND catch-up would rescan every study.

Orthanc does keep a durable, ordered log of what it stored: ``GET /changes?since=N`` (each change
numbered ``Seq``; it survives an Orthanc restart). The gateway keeps its own cursor in that log
(``catchup-cursor`` in its spool folder, advanced only once an instance is safely queued or known)
and, every ``CAD_GATEWAY_CATCH_UP_INTERVAL_S``, reads the new ``NewInstance`` changes: an instance
it has seen (pushed meanwhile, or one of its own SRs) is skipped on its SOP Instance UID alone;
anything else is downloaded to its spool and accepted exactly as a C-STORE from the PACS would be
(same SOP-class rules, same duplicate check under the same lock). A change younger than
``CAD_GATEWAY_CATCH_UP_DELAY_S`` waits, so the push, when the gateway is up, gets there first and
nothing is downloaded twice. On its first start the gateway starts at the log's end: it does not
classify the PACS's history.

The push stays: it is immediate; the catch-up makes it complete.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cad.durable import write_atomic

log = logging.getLogger(__name__)

PAGE = 100
"""Changes read per request."""


class OrthancCatchUp:
    """Reads Orthanc's change log from a durable cursor and hands unseen instances on."""

    def __init__(
        self,
        url: str,
        folder: Path,
        seen: Callable[[str], bool],
        accept: Callable[[Path, str], int],
        caller: str,
        delay_s: float,
        credentials_file: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.cursor_path = folder / "catchup-cursor"
        self.download = folder / "catchup.dcm"
        self.seen = seen
        """True for a SOP Instance UID the gateway has taken (or sent) already."""
        self.accept = accept
        """Queue a downloaded instance as a C-STORE from ``caller`` would; its DIMSE status."""
        self.caller = caller
        self.delay_s = delay_s
        self.headers: dict[str, str] = {}
        if credentials_file is not None:  # "user:password", as Orthanc's RegisteredUsers
            token = base64.b64encode(credentials_file.read_text().strip().encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self._first_seen: dict[int, float] = {}
        self.fetched = 0
        """Instances downloaded and queued (what the push had missed)."""

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers=self.headers)  # noqa: S310  http(s) only: GatewaySettings
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  http(s) only: GatewaySettings
            return json.loads(response.read())

    def _cursor(self) -> int | None:
        if not self.cursor_path.exists():
            return None
        return int(self.cursor_path.read_text().strip())

    def _advance(self, seq: int) -> None:
        write_atomic(self.cursor_path, f"{seq}\n".encode())

    def poll(self) -> int:
        """Read the changes since the cursor; returns how many instances were queued. Raises
        OSError while Orthanc does not answer (the caller logs it and tries again later)."""
        cursor = self._cursor()
        if cursor is None:  # first start: from now on, not the PACS's history
            self._advance(int(self._get("/changes?last")["Last"]))
            return 0
        queued = 0
        now = time.monotonic()
        while True:
            page = self._get(f"/changes?since={cursor}&limit={PAGE}")
            changes = page.get("Changes", [])
            for change in changes:  # a whole page ages together, not one change per poll
                self._first_seen.setdefault(int(change["Seq"]), now)
            for change in changes:
                seq = int(change["Seq"])
                if change.get("ChangeType") == "NewInstance":
                    if now - self._first_seen[seq] < self.delay_s:
                        return queued  # young: the push may still be delivering it
                    queued += self._take(str(change["ID"]))
                self._first_seen.pop(seq, None)
                cursor = seq
                self._advance(cursor)
            if page.get("Done", True) or not page.get("Changes"):
                return queued

    def _take(self, orthanc_id: str) -> int:
        """One new instance: skipped when seen, else downloaded and accepted. 1 if queued."""
        uid = str(
            self._get(f"/instances/{orthanc_id}").get("MainDicomTags", {}).get("SOPInstanceUID", "")
        )
        if not uid or self.seen(uid):
            return 0
        request = urllib.request.Request(  # noqa: S310  http(s) only: GatewaySettings
            f"{self.url}/instances/{orthanc_id}/file", headers=self.headers
        )
        with (
            urllib.request.urlopen(request, timeout=300) as response,  # noqa: S310  http(s) only: GatewaySettings
            self.download.open("wb") as out,
        ):
            shutil.copyfileobj(response, out, 1 << 20)  # streamed: any size, a buffer of memory
        try:
            status = self.accept(self.download, self.caller)
        finally:
            self.download.unlink(missing_ok=True)
        if status != 0:
            raise OSError(f"the instance could not be queued (status 0x{status:04X})")
        self.fetched += 1
        log.info("caught up with an instance the PACS stored while it was not pushed")
        return 1
