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

from bench.serving import (
    build_model,
    dicom_requests,
    frame_paths,
    frame_requests,
    load,
    log,
    png_frame,
    server_env,
    video,
)
from support.launch import server_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--providers", default="auto")
    parser.add_argument("--frames", type=int, default=450)
    parser.add_argument("--load-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cad-video-"))
    try:
        build_model(work)
        env = server_env(work, args.providers)
        frames = [png_frame(p, i) for i, p in enumerate(frame_paths(30) or [None] * 30)]
        with server_process(env, log_lines=[]) as (_proc, address):
            log(f"load: 8 clients for {args.load_seconds:.0f} s ...")
            load(address, dicom_requests() + frame_requests(9), 8, args.load_seconds)
            for k in range(args.repeats):
                r = video(address, frames, 30.0, args.frames)
                print(
                    json.dumps(
                        {
                            "run": k + 1,
                            **{
                                key: round(v, 1) if isinstance(v, float) else v
                                for key, v in r.items()
                            },
                        }
                    ),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
