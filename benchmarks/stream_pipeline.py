"""`Predictor.stream` (frames read and resized in a thread while the model runs) against the simple loop (read a frame,
predict it, repeat) on the same video file, in alternating rounds in one process (the bar: "pipelining as a library
feature").

    python benchmarks/stream_pipeline.py BUNDLE [BUNDLE ...] [--frames 300] [--rounds 3]

The video is made here: 480x640 frames panning across skimage's photos, written as MP4 (mp4v) by OpenCV. Both loops
decode it with OpenCV and answer every frame; the table gives the median frames/s of the rounds, the ratio, and
whether both gave the same top-1 on every frame.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_video(path: Path, frames: int) -> Path:
    import cv2
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    for i in range(frames):
        photo = photos[(i // 100) % len(photos)]
        big = cv2.resize(photo, (960, 720))
        x, y = (i % 100) * 3, (i % 100) * 2  # a slow pan
        writer.write(cv2.cvtColor(np.ascontiguousarray(big[y : y + 480, x : x + 640]), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def simple_loop(predictor, video: str) -> tuple[float, list[str]]:
    import runtimes

    t0 = time.perf_counter()
    labels = [predictor.predict(f.image, top_k=1)[0][0].label for f in runtimes.VideoSource(video).frames()]
    return len(labels) / (time.perf_counter() - t0), labels


def pipelined(predictor, video: str) -> tuple[float, list[str]]:
    import runtimes

    t0 = time.perf_counter()
    labels = [r.answer[0].label for r in predictor.stream(runtimes.VideoSource(video), top_k=1)]
    return len(labels) / (time.perf_counter() - t0), labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import runtimes

    with tempfile.TemporaryDirectory() as tmp:
        video = str(make_video(Path(tmp) / "pan.mp4", args.frames))
        print(f"{args.frames} frames of 480x640 MP4, {os.cpu_count()} CPUs, median of {args.rounds} alternating rounds")
        print(f"{'bundle':36s} {'simple loop':>14s} {'stream':>14s} {'ratio':>7s}  same top-1")
        for path in args.bundles:
            with runtimes.load(path) as predictor:
                simple_loop(predictor, video)  # warm-up: the session, the decoder, the page cache
                rates: dict[str, list[float]] = {"simple": [], "stream": []}
                same = True
                for _ in range(args.rounds):
                    fps_a, a = simple_loop(predictor, video)
                    fps_b, b = pipelined(predictor, video)
                    rates["simple"].append(fps_a)
                    rates["stream"].append(fps_b)
                    same = same and a == b
            s, p = statistics.median(rates["simple"]), statistics.median(rates["stream"])
            name = f"{Path(path).parent.name}/{Path(path).name}"
            print(f"{name:36s} {s:9.1f} fr/s {p:9.1f} fr/s {p / s:6.2f}x  {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
