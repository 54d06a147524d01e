"""High-throughput variant of the device loop: several frames in flight at once, measured against the simple loop.

The simple loop decodes-free frames one after another: resize, infer, top-k. The pipelined loop keeps `--workers`
frames in flight on a thread pool. `Predictor.predict` may be called from several threads: ONNX Runtime sessions
run concurrently, OpenVINO gives each thread its own infer request and is loaded with the throughput hint (several
streams). Preprocessing of one frame then overlaps inference of another.

    python examples/pipelined.py BUNDLE --frames 200 --workers 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import runtimes


def camera_like_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def simple_loop(predictor, frames) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    labels = [predictor.predict(f, top_k=1)[0][0].label for f in frames]
    return len(frames) / (time.perf_counter() - t0), labels


def pipelined_loop(predictor, frames, workers: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # map keeps the frames' order
        labels = list(pool.map(lambda f: predictor.predict(f, top_k=1)[0][0].label, frames))
    return len(frames) / (time.perf_counter() - t0), labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2))
    args = ap.parse_args()

    frames = camera_like_frames(args.frames)
    backend = runtimes.read_manifest(args.bundle).backend
    with runtimes.load(args.bundle) as simple:
        simple_loop(simple, frames[:5])  # warm-up
        simple_fps, simple_labels = simple_loop(simple, frames)
    options = {"hint": "throughput"} if backend == "openvino" else {}
    with runtimes.load(args.bundle, **options) as fast:
        pipelined_loop(fast, frames[:5], args.workers)  # warm-up
        fast_fps, fast_labels = pipelined_loop(fast, frames, args.workers)
    same = sum(a == b for a, b in zip(simple_labels, fast_labels))
    print(f"{backend}, {os.cpu_count()} CPUs, {args.frames} frames of 480x640 -> {runtimes.read_manifest(args.bundle).preprocessing.input_size}")
    print(f"simple loop:     {simple_fps:7.1f} frames/s")
    print(f"pipelined ({args.workers} workers): {fast_fps:7.1f} frames/s")
    print(f"gain: {fast_fps / simple_fps:.2f}x; same labels on {same}/{len(frames)} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
