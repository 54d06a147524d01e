"""A bundle loaded for one batch size against the same bundle with its dynamic batch, interleaved call by call in one
process (static shapes at load): the cleanest measure of what `runtimes.load(..., batch_size=N)` changes.

    python benchmarks/static_batch.py BUNDLE [BUNDLE ...] [--batch 1] [--rounds 200]

Times the backend's plain call (`Predictor.native_call`, no checks of ours) of both predictors in alternation on one
random uint8 batch and prints each p50 and the ratio static/dynamic. `benchmarks/headline.py` compares both with
OpenVINO's `benchmark_app`, which runs in its own process and cannot be interleaved.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    import runtimes

    print(f"{'bundle':40s} {'dynamic p50':>12s} {'static p50':>11s} {'static/dynamic':>15s}")
    for path in args.bundles:
        with runtimes.load(path) as dynamic, runtimes.load(path, batch_size=args.batch) as static:
            batch = dynamic.prepare(dynamic.input.synthetic(args.batch))
            calls = {"dynamic": dynamic.native_call(), "static": static.native_call()}
            for call in calls.values():
                for _ in range(20):
                    call(batch)
            times: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    t = time.perf_counter()
                    call(batch)
                    times[name].append(time.perf_counter() - t)
        d, s = (1000 * float(np.median(times[k])) for k in ("dynamic", "static"))
        print(f"{str(path)[-40:]:40s} {d:10.2f}ms {s:9.2f}ms {s / d:14.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
