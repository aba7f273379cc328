"""The serving benchmark's video phase, repeated on one server after a load phase.

    .venv/bin/python -m bench.video_repeats [--repeats 6] [--providers auto|cpu|cuda]

A p99 over 450 frames is the 5th slowest frame, so one run says little about the tail; this
starts one ``cad-server`` (same settings as ``bench.serving``), loads it for 15 s with 8
clients, then streams ``--repeats`` times 450 frames at 30 frames/s and prints each run's
frame rate and latency percentiles (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench.serving import dicom_requests, frame_paths, frame_requests, load, log, png_frame, video
from service.launch import server_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--frames", type=int, default=450)
    parser.add_argument("--load-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    from trainer.bootstrap import init_model
    from trainer.settings import TrainerSettings

    work = Path(tempfile.mkdtemp(prefix="cad-video-"))
    try:
        init_model(TrainerSettings(registry_root=work / "registry", input_size=224, recipe="polyp"))
        env = {"CAD_REGISTRY_ROOT": str(work / "registry"), "CAD_HOST": "127.0.0.1",
               "CAD_STORE_URL": f"sqlite:///{work / 'labels.sqlite3'}", "CAD_ARCHIVE_ROOT": str(work / "archive"),
               "CAD_POLL_INTERVAL_S": "0.1", "CAD_PROVIDERS": args.providers, "CAD_BATCH_SIZE": "32",
               "CAD_BATCH_MAX_SIZE": "64", "CAD_WORKERS": "4"}
        frames = [png_frame(p, i) for i, p in enumerate(frame_paths(30) or [None] * 30)]
        with server_process(env, log_lines=[]) as (_proc, address):
            log(f"load: 8 clients for {args.load_seconds:.0f} s ...")
            load(address, dicom_requests() + frame_requests(9), 8, args.load_seconds)
            for k in range(args.repeats):
                r = video(address, frames, 30.0, args.frames)
                print(json.dumps({"run": k + 1, **{key: round(v, 1) if isinstance(v, float) else v
                                                   for key, v in r.items()}}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
