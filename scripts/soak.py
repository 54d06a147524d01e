"""Soak a bundle: many `predict` calls from several threads; report resident memory and answers that differ.

    python scripts/soak.py BUNDLE [--calls 10000] [--threads 4] [--warmup 1000]

One bundle per process, so the memory readings are that bundle's alone.

Each thread classifies frames of mixed sizes from a fixed pool. Every answer (top-3 labels and scores) is compared
with the answer the same predictor gave for that frame single-threaded before the soak, so a race that mixes
requests, buffers or results shows up as a differing answer. Resident memory (Linux /proc) is read after the
warm-up calls and at the end. Exits 1 when any answer differs or any call raised.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runtimes  # noqa: E402
from runtimes.bench import _rss_mib  # noqa: E402


def frames(n: int = 24) -> list[np.ndarray]:
    """Mixed sizes and content: camera-like frames, small crops, a grey one."""
    pool = []
    for i in range(n):
        rng = np.random.default_rng(i)
        h, w = (480, 640) if i % 6 == 0 else (40 + 13 * i, 50 + 7 * i)
        f = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        pool.append(f[..., 0] if i % 8 == 5 else f)
    return pool


def answer(top) -> tuple:
    return tuple((c.label, round(c.score, 5)) for c in top)


def soak(bundle: str, calls: int, threads: int, warmup: int) -> dict:
    pool = frames()
    with runtimes.load(bundle) as p:
        expected = [answer(p.predict(f, top_k=3)[0]) for f in pool]
        counter = iter(range(calls))
        lock = threading.Lock()
        state = {"done": 0, "differ": 0, "errors": [], "rss_warm": None}
        warmed = threading.Event()

        def worker() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    got = answer(p.predict(pool[i % len(pool)], top_k=3)[0])
                except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                    with lock:
                        state["errors"].append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    state["done"] += 1
                    state["differ"] += got != expected[i % len(pool)]
                    if state["done"] == warmup:
                        state["rss_warm"] = _rss_mib()
                        warmed.set()

        t0 = time.perf_counter()
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        seconds = time.perf_counter() - t0
        return {
            "bundle": bundle,
            "backend": p.describe().get("backend", p.manifest.backend),
            "calls": state["done"],
            "errors": len(state["errors"]),
            "first_error": (state["errors"] or [""])[0],
            "differ": state["differ"],
            "rss_warm": state["rss_warm"],
            "rss_end": _rss_mib(),
            "calls_per_s": state["done"] / seconds,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="the bundle directory to soak")
    ap.add_argument("--calls", type=int, default=10000, help="predict calls per bundle (default 10000)")
    ap.add_argument("--threads", type=int, default=4, help="threads calling predict at once (default 4)")
    ap.add_argument("--warmup", type=int, default=1000, help="calls before the first memory reading (default 1000)")
    args = ap.parse_args()
    rows = [soak(args.bundle, args.calls, args.threads, args.warmup)]
    print(f"| bundle | backend | calls | threads | errors | differing answers | RSS after {args.warmup} calls | RSS at the end | calls/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {Path(r['bundle']).name} | {r['backend']} | {r['calls']} | {args.threads} | {r['errors']} | {r['differ']} | "
            f"{r['rss_warm']:.1f} MiB | {r['rss_end']:.1f} MiB | {r['calls_per_s']:.0f} |"
        )
        if r["errors"]:
            print(f"first error in {r['bundle']}: {r['first_error']}")
    return 1 if any(r["errors"] or r["differ"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
