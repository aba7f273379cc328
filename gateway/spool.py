"""The gateway's folders on disk, its wake-up signal and its stop flag: what the receiver, the
classifying worker and the sender share. Everything between receipt and delivery is a file in
one of these folders, so a restart goes on where the last process stopped."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from cad.durable import write_atomic
from gateway.policy import file_key
from gateway.sr import Point3D, Region


class Spool:
    """``inbox``: received objects waiting to be classified (with a ``.json`` of what was read
    from their header); ``outbox``: SRs waiting to be sent; ``seen``: a marker per instance
    received or sent (never classified twice, the gateway's own SRs never classified);
    ``failed``: objects set aside with their reason; ``regions``: an upstream CAD's regions and
    points, waiting for their images; ``results``: a series' findings until it is complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox, self.outbox, self.seen = root / "inbox", root / "outbox", root / "seen"
        self.failed, self.regions, self.results = (
            root / "failed",
            root / "regions",
            root / "results",
        )
        for folder in (self.inbox, self.outbox, self.seen, self.failed, self.regions, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self._wake = threading.Condition()
        self.regions_lock = threading.Lock()
        """Associations store in threads of their own: one SR's regions merged at a time."""

    def notify(self) -> None:
        """Wake the worker and the sender: there is something new."""
        with self._wake:
            self._wake.notify_all()

    def wait(self, seconds: float) -> None:
        """Sleep until notified or ``seconds`` have passed."""
        with self._wake:
            self._wake.wait(seconds)

    def points_path(self, frame_of_reference: str) -> Path:
        return self.regions / f"for-{file_key(frame_of_reference)}.json"

    def keep_regions(self, regions: list[Region]) -> None:
        """An upstream SR's regions, kept per referenced instance (merged with earlier ones)."""
        by_instance: dict[str, list[Region]] = {}
        for r in regions:
            by_instance.setdefault(r.sop_instance_uid, []).append(r)
        with self.regions_lock:
            for uid, found in by_instance.items():
                rows = [[r.frame_index, r.x, r.y, r.width, r.height] for r in found]
                _append(self.regions / f"{file_key(uid)}.json", rows)

    def keep_points(self, points: list[Point3D]) -> None:
        """An upstream SR's 3D points (PE candidates), kept per frame of reference."""
        by_frame: dict[str, list[Point3D]] = {}
        for p in points:
            by_frame.setdefault(p.frame_of_reference_uid, []).append(p)
        with self.regions_lock:
            for uid, found in by_frame.items():
                _append(self.points_path(uid), [[p.x, p.y, p.z] for p in found])


def _append(path: Path, rows: list[list[float]]) -> None:
    """``rows`` added to the JSON list kept in ``path`` (written whole, atomically)."""
    kept = json.loads(path.read_text()) if path.exists() else []
    write_atomic(path, json.dumps(kept + rows).encode())
