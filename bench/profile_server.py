"""Where a request's time goes inside the server: stage timers and a stack-sampling profile.

    .venv/bin/python -m bench.profile_server [--providers auto|cpu|cuda] [--clients 8]
                                             [--seconds 10] [--workers 4]

Runs the server in this process (``ServerThread``, same settings as ``bench.serving``) with the
benchmark's load generator in a child process, so the client does not share this GIL. Prints,
per stage (decode, patch extraction, waiting in the batcher, model run, record), the calls and
mean time, then the most frequent innermost frames of the server's worker, batcher and
event-loop threads (sampled every 5 ms). A development tool: it wraps the stages with timers.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.serving import MAX_BATCH, PREFERRED_BATCH, ROOT, build_model

STAGES: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
_lock = threading.Lock()


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                STAGES[label].append(time.perf_counter() - t0)

    return wrapper


def sample(stop: threading.Event, counts: collections.Counter[str]) -> None:
    prefixes = ("cad-worker", "cad-batcher", "cad-server")
    while not stop.is_set():
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            name = names.get(ident, "")
            if name.startswith(prefixes):
                stack = traceback.extract_stack(frame)[-3:]
                where = " <- ".join(
                    f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(stack)
                )
                counts[f"{name.rstrip('0123456789_-')} | {where}"] += 1
        time.sleep(0.005)  # the sampling period, not synchronisation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runners", type=int, default=1)
    args = parser.parse_args(argv)

    from cad.models import inference
    from cad.models.batcher import DynamicBatcher
    from cad.models.model import LoadedModel
    from service.rpc.server import ServerThread
    from service.settings import ServerSettings

    inference.decode_image = timed("decode", inference.decode_image)
    inference.extract_many = timed("extract patches", inference.extract_many)
    DynamicBatcher.predict = timed("wait for the model", DynamicBatcher.predict)  # type: ignore[method-assign]
    LoadedModel.run = timed("model run (one batch)", LoadedModel.run)  # type: ignore[method-assign]
    inference.Classifier.classify = timed("classify (total)", inference.Classifier.classify)  # type: ignore[method-assign]

    work = Path(tempfile.mkdtemp(prefix="cad-profile-"))
    try:
        build_model(work)
        settings = ServerSettings(
            registry_root=work / "registry",
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            store_url=f"sqlite:///{work / 'labels.sqlite3'}",
            archive_root=work / "archive",
            providers=args.providers,
            batch_size=PREFERRED_BATCH,
            batch_max_size=MAX_BATCH,
            workers=args.workers,
            batch_runners=args.runners,
        )
        with ServerThread(settings) as server:
            server.refresh_models()
            recorder = server.server.classifier.recorder
            recorder.record = timed("record", recorder.record)

            def clients(seconds: float) -> str:
                code = (
                    "import json; from bench.serving import load, dicom_requests, frame_requests; "
                    f"print(json.dumps(load({server.address!r}, dicom_requests() + frame_requests(9), "
                    f"{args.clients}, {seconds})))"
                )
                return subprocess.run(
                    [sys.executable, "-c", code],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()

            clients(3.0)  # warm-up
            STAGES.clear()
            counts: collections.Counter[str] = collections.Counter()
            stop = threading.Event()
            sampler = threading.Thread(target=sample, args=(stop, counts), daemon=True)
            sampler.start()
            print("load:", clients(args.seconds))
            stop.set()
            sampler.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for label, times in sorted(STAGES.items(), key=lambda kv: -sum(kv[1])):
        print(f"{label:24s} calls {len(times):5d}  mean {sum(times) / len(times) * 1000:8.2f} ms")
    total = sum(counts.values()) or 1
    for where, n in counts.most_common(25):
        print(f"{n / total * 100:5.1f}%  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
