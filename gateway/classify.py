"""Classifying what was received: the worker's turn over the inbox. An image's frames go to the
CAD server's Classify a few per turn (each a file of its own), a CT series with an upstream CAD's
3D points goes to ClassifyVolume whole; the SR is written to the outbox once all are classified,
per image or per series. A refusal for the object's own sake sets it aside with a counted
reason; a failure of its own is retried a few times; the server being away pauses the turn."""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pydicom import dcmread

from cad.durable import write_atomic
from gateway.frames import frame_count, frame_file, read_header
from gateway.metrics import GatewayMetrics, GatewayStats
from gateway.policy import SERVER_AWAY, file_key, idempotency_key, refused_for_good
from gateway.settings import GatewaySettings
from gateway.spool import Spool
from gateway.sr import (
    Finding,
    Finding3D,
    Point3D,
    build_series_sr,
    build_sr,
    build_volume_sr,
)
from service.api.cad.v1 import cad_pb2, cad_pb2_grpc

log = logging.getLogger(__name__)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # classified with its series meanwhile
        return 0


@dataclass
class _Retry:
    """An object whose last attempt failed for a reason of its own: when it may go again."""

    attempts: int
    next_at: float


class Classifier:
    """The classifying thread's work: :meth:`loop` until the spool's stop flag is set.
    ``mode_of``: where a caller's candidates come from (``frame`` or ``sr``)."""

    def __init__(
        self,
        settings: GatewaySettings,
        spool: Spool,
        stats: GatewayStats,
        metrics: GatewayMetrics,
        stub: cad_pb2_grpc.CadInferenceStub,
        device_uid: str,
        mode_of: Callable[[str], str],
    ) -> None:
        self.settings, self.spool, self.stats, self.metrics = settings, spool, stats, metrics
        self.stub, self.device_uid, self.mode_of = stub, device_uid, mode_of
        self.token = settings.token_file.read_text().strip() if settings.token_file else ""
        self._retry: dict[str, _Retry] = {}
        """Objects waiting to be tried again (by file stem); a restart tries them at once."""
        self._purged_at = 0.0

    def loop(self) -> None:
        backoff = 0.5
        while not self.spool.stop.is_set():
            self.purge_set_aside()
            pending = sorted(self.spool.inbox.glob("*.dcm"), key=_mtime)
            done_any = False
            now = time.time()
            for path in pending:
                if self.spool.stop.is_set():
                    return
                if not path.exists():  # classified with its series a moment ago
                    continue
                retry = self._retry.get(path.stem)
                if retry is not None and retry.next_at > now:
                    continue  # its own failure: the others go first meanwhile
                try:
                    done_any |= self._classify(path)
                    backoff = 0.5
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    if code in SERVER_AWAY:
                        log.warning("the CAD server did not answer (%s); retrying", code.name)
                        self.spool.wait(backoff)
                        backoff = min(backoff * 2, self.settings.retry_max_s)
                        break
                    if refused_for_good(code, details):
                        log.warning("an image was refused by the CAD server: %s", details)
                        self._set_aside(path, code.name.lower())
                    else:
                        self._failed_once(path, code.name)
                    done_any = True
                except Exception as exc:  # noqa: BLE001 (an image it cannot read: set aside)
                    log.warning(
                        "an image could not be classified (%s); set aside", type(exc).__name__
                    )
                    self._set_aside(path, "unreadable")
                    done_any = True
            done_any |= self.flush_results()
            if not done_any:
                self.spool.wait(1.0 if pending or any(self.spool.results.iterdir()) else 5.0)

    def _failed_once(self, path: Path, why: str) -> None:
        """A failure of the object's own (a deadline, a server error): tried again after a
        back-off while the others go on, set aside after ``max_attempts``."""
        retry = self._retry.get(path.stem) or _Retry(0, 0.0)
        retry.attempts += 1
        if retry.attempts >= self.settings.max_attempts:
            log.warning("an image failed %d times (%s); set aside", retry.attempts, why)
            self._set_aside(path, "attempts")
            return
        retry.next_at = time.time() + min(2.0**retry.attempts, self.settings.retry_max_s)
        self._retry[path.stem] = retry
        self.stats.retries += 1
        self.metrics.retries.inc()
        log.warning("an image failed (%s, attempt %d); retried later", why, retry.attempts)

    def _set_aside(self, path: Path, reason: str) -> None:
        """Out of the queue, unclassified, with its reason beside it and counted; deleted after
        ``failed_retention_days``."""
        self._retry.pop(path.stem, None)
        if path.exists():
            path.replace(self.spool.failed / path.name)
            write_atomic((self.spool.failed / path.name).with_suffix(".reason"), reason.encode())
        path.with_suffix(".json").unlink(missing_ok=True)
        path.with_suffix(".progress").unlink(missing_ok=True)
        self.stats.failed += 1
        self.stats.set_aside[reason] = self.stats.set_aside.get(reason, 0) + 1
        self.metrics.classify_failures.inc()
        self.metrics.set_aside.labels(reason).inc()

    def purge_set_aside(self) -> None:
        """Delete set-aside objects older than the retention (checked once a minute)."""
        now = time.time()
        if now - self._purged_at < 60:
            return
        self._purged_at = now
        horizon = now - self.settings.failed_retention_days * 86400
        for path in self.spool.failed.iterdir():
            try:
                if path.stat().st_mtime < horizon:
                    counted = path.suffix == ".dcm" or path.is_dir()
                    if path.is_dir():  # a series' results whose SR could not be built
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                    if counted:
                        self.metrics.expired.inc()
            except FileNotFoundError:
                continue

    def _candidates(
        self, path: Path, meta: dict[str, Any], frames: int, rows: int, cols: int
    ) -> tuple[list[tuple[float, ...]], str] | bool:
        """The boxes to classify on ``path`` and their recipe; or True/False when the object
        was handled another way (classified with its series, set aside) or must wait."""
        sidecar = path.with_suffix(".json")
        if self.mode_of(meta["caller"]) != "sr":
            return [(f, 0.0, 0.0, float(cols), float(rows)) for f in range(frames)], "frame"
        kept = self.spool.regions / f"{path.stem}.json"
        points = self.spool.points_path(meta.get("for", ""))
        if not kept.exists() and meta.get("modality") == "CT" and points.exists():
            return self._classify_series(meta["series"], meta["for"])
        if not kept.exists():
            if time.time() - path.stat().st_mtime < self.settings.pair_wait_s:
                return False  # its SR may still come
            log.warning("an image waited %.0f s for its SR; set aside", self.settings.pair_wait_s)
            self._set_aside(path, "unpaired")
            sidecar.unlink(missing_ok=True)
            self.stats.unpaired += 1
            return True
        return [tuple(r) for r in json.loads(kept.read_text())], ""

    def _classify(self, path: Path) -> bool:
        """A turn of one received object: up to ``frames_per_turn`` of its frames classified,
        each sent as a file of its own; once every frame is, its SR written. False while it
        waits for the SR that names its candidates. Whole-frame: every frame one candidate
        (recipe ``frame``); from an SR: its regions, on their frames, with the model's recipe.
        What a turn found is kept beside the object (``.progress``): a restart goes on."""
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {"caller": ""}
        ds = read_header(path)
        frames = frame_count(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        found = self._candidates(path, meta, frames, rows, cols)
        if isinstance(found, bool):
            return found
        boxes, recipe = found
        progress_path = path.with_suffix(".progress")
        progress: dict[str, Any] = (
            json.loads(progress_path.read_text())
            if progress_path.exists()
            else {"version": "", "frames": {}}
        )
        todo = [f for f in sorted({int(b[0]) for b in boxes}) if str(f) not in progress["frames"]]
        for frame in todo[: self.settings.frames_per_turn]:
            mine = [b for b in boxes if int(b[0]) == frame]
            reply = self.stub.Classify(
                cad_pb2.ClassifyRequest(
                    dicom=frame_file(path, ds, frame),
                    frame_index=0,  # the frame is sent as a file of its own
                    recipe=recipe,
                    source_id=f"dicom-gateway frame {frame + 1}" if frames > 1 else "",
                    idempotency_key=idempotency_key(meta.get("uid") or path.stem, frame, mine),
                    candidates=[
                        cad_pb2.Candidate(
                            client_id=f"frame-{frame + 1}-{i + 1}",
                            box=cad_pb2.Box(x=b[1], y=b[2], width=b[3], height=b[4]),
                        )
                        for i, b in enumerate(mine)
                    ],
                ),
                timeout=self.settings.rpc_timeout_s,
                metadata=[("authorization", f"Bearer {self.token}")] if self.token else None,
            )
            if progress["version"] and reply.model_version != progress["version"]:
                progress = {"version": "", "frames": {}}  # a new model: one SR, one version
            progress["version"] = reply.model_version
            progress["frames"][str(frame)] = [r.probability for r in reply.results]
        remaining = [f for f in todo if str(f) not in progress["frames"]]
        if remaining:
            write_atomic(progress_path, json.dumps(progress).encode(), sync=False)
            return True
        findings = []
        for frame in sorted({int(b[0]) for b in boxes}):
            mine = [b for b in boxes if int(b[0]) == frame]
            probabilities = progress["frames"][str(frame)]
            for b, p in zip(mine, probabilities, strict=True):
                findings.append(Finding(frame, b[1], b[2], b[3], b[4], p))
        version = progress["version"]
        received = path.stat().st_mtime
        if self.settings.sr_grouping == "image":
            sr = build_sr(ds, findings, version, self.device_uid)
            self._to_outbox(sr, received, path.stem)
        else:  # kept until its series is complete: one SR for the series
            self.keep_result(path, version, received, findings)
        path.unlink()
        sidecar.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)
        self._retry.pop(path.stem, None)
        self.stats.classified += 1
        log.info(
            "classified an image: %d candidate(s) on %d frame(s), model v%s",
            len(findings),
            frames,
            version,
        )
        self.spool.notify()
        return True

    def _to_outbox(self, sr: Any, received: float, name: str) -> None:
        """An SR into the outbox (its UID first marked as the gateway's own: never input)."""
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        write_atomic(self.spool.seen / file_key(str(sr.SOPInstanceUID)), b"ours\n")
        write_atomic(self.spool.outbox / f"{int(received * 1e6)}-{name}.dcm", buffer.getvalue())

    def keep_result(
        self, path: Path, version: str, received: float, findings: list[Finding]
    ) -> None:
        """One image's findings, kept with its header (no pixels) in its series' group (per
        model version) until the series is complete (:meth:`flush_results`)."""
        header = dcmread(path, stop_before_pixels=True)
        series = file_key(str(getattr(header, "SeriesInstanceUID", "") or "") or path.stem)
        group = self.spool.results / file_key(f"{series}\0{version}")  # (bookkeeping names no UID)
        group.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        header.save_as(buffer, enforce_file_format=True)
        write_atomic(group / f"{path.stem}.dcm", buffer.getvalue())
        kept = [[f.frame_index, f.x, f.y, f.width, f.height, f.probability] for f in findings]
        write_atomic(
            group / f"{path.stem}.json",  # last: a group's .json files are its complete results
            json.dumps(
                {"series": series, "version": version, "received": received, "findings": kept}
            ).encode(),
        )

    def flush_results(self) -> bool:
        """One SR per series whose images are all classified and which has been quiet for
        ``series_quiet_s`` (no image of it waiting, none classified that recently). An image
        of the series arriving later gets an SR of its own in the same SR series."""
        groups = [g for g in self.spool.results.iterdir() if g.is_dir()]
        if not groups:
            return False
        waiting = set()
        for sidecar in self.spool.inbox.glob("*.json"):
            try:
                waiting.add(file_key(json.loads(sidecar.read_text()).get("series") or sidecar.stem))
            except (OSError, ValueError):
                continue
        done = False
        now = time.time()
        for group in groups:
            items = sorted(group.glob("*.json"))
            if not items:
                continue
            kept = [json.loads(p.read_text()) for p in items]
            newest = max(p.stat().st_mtime for p in items)
            if kept[0]["series"] in waiting or now - newest < self.settings.series_quiet_s:
                continue
            try:
                images = [
                    (
                        dcmread(p.with_suffix(".dcm")),
                        [Finding(int(f[0]), *f[1:]) for f in k["findings"]],
                    )
                    for p, k in zip(items, kept, strict=True)
                ]
                sr = build_series_sr(images, kept[0]["version"], self.device_uid)
                self._to_outbox(sr, min(k["received"] for k in kept), group.name)
            except Exception as exc:  # noqa: BLE001 (one series' SR never stops the others)
                log.warning("a series' SR could not be built (%s); set aside", type(exc).__name__)
                group.replace(self.spool.failed / f"results-{group.name}")
                write_atomic(self.spool.failed / f"results-{group.name}.reason", b"sr")
                self.stats.set_aside["sr"] = self.stats.set_aside.get("sr", 0) + 1
                self.metrics.set_aside.labels("sr").inc()
                continue
            shutil.rmtree(group)
            log.info("an SR for %d image(s) of one series", len(images))
            done = True
        if done:
            self.spool.notify()
        return done

    def _classify_series(self, series: str, frame_of_reference: str) -> bool:
        """A CT series whose upstream SR named 3D points (PE candidates): classified as one
        volume once no instance of it has arrived for ``series_quiet_s``; one SR for the
        series, its points with their probabilities. False while the series may still grow."""
        files = []
        for sidecar in self.spool.inbox.glob("*.json"):
            meta = json.loads(sidecar.read_text())
            if meta.get("series") == series and sidecar.with_suffix(".dcm").exists():
                files.append(sidecar.with_suffix(".dcm"))
        if not files:
            return False
        newest = max(f.stat().st_mtime for f in files)
        if time.time() - newest < self.settings.series_quiet_s:
            return False
        with self.spool.regions_lock:
            kept = json.loads(self.spool.points_path(frame_of_reference).read_text())
        points = [Point3D(frame_of_reference, *p) for p in kept]
        blobs = [f.read_bytes() for f in files]
        header = cad_pb2.VolumeHeader(
            source_id=f"series:{file_key(series)}",
            candidates=[
                cad_pb2.VolumeCandidate(
                    client_id=f"point-{i + 1}",
                    patient_mm=cad_pb2.Point3D(x=p.x, y=p.y, z=p.z),
                )
                for i, p in enumerate(points)
            ],
        )
        chunks = [cad_pb2.VolumeChunk(header=header)]
        chunks += [cad_pb2.VolumeChunk(instances=[b]) for b in blobs]  # one instance a message
        try:
            reply = self.stub.ClassifyVolume(
                iter(chunks),
                timeout=self.settings.rpc_timeout_s,
                metadata=[("authorization", f"Bearer {self.token}")] if self.token else None,
            )
        except grpc.RpcError as exc:
            if not refused_for_good(exc.code(), exc.details() or ""):
                raise  # the server is away, or a failure of its own: retried
            log.warning("a CT series was refused by the CAD server: %s", exc.details())
            for f in files:
                self._set_aside(f, exc.code().name.lower())
            return True
        datasets = [dcmread(io.BytesIO(b)) for b in blobs]
        findings = [Finding3D(p, r.probability) for p, r in zip(points, reply.results, strict=True)]
        sr = build_volume_sr(datasets, findings, reply.model_version, self.device_uid)
        received = min(f.stat().st_mtime for f in files)
        self._to_outbox(sr, received, file_key(series))
        for f in files:
            f.unlink()
            f.with_suffix(".json").unlink(missing_ok=True)
        self.stats.classified += 1
        log.info(
            "classified a CT series: %d point(s) in %d instance(s), model v%s",
            len(points),
            len(files),
            reply.model_version,
        )
        self.spool.notify()
        return True
