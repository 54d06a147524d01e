"""What checking a signature adds to loading a bundle, measured in one run, interleaved.

    make demo && python benchmarks/signature_cost.py demo-output/bundle [--rounds 30]

Per round, in alternating order: `open_bundle` without keys (the sha256 checks every load does), and with one trusted
key (those checks plus the signature, `runtimes.signing`); then the full `runtimes.load` both ways (an ONNX Runtime
session included). The signature is made once on a copy with a fresh key. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    import runtimes
    from runtimes.bundle import open_bundle, sign_bundle
    from runtimes.signing import generate_key_pair

    with tempfile.TemporaryDirectory(prefix="edge-transfer-sigcost-") as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, bundle)
        private, public, _ = generate_key_pair(Path(tmp) / "k.key")
        t = time.perf_counter()
        sign_bundle(bundle, private)
        sign_ms = (time.perf_counter() - t) * 1000
        size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 1e6
        times: dict[str, list[float]] = {k: [] for k in ("open, no key", "open, 1 trusted key", "load, no key", "load, 1 trusted key")}

        def timed(name: str, fn) -> None:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)

        def load(keys: list[Path]) -> None:
            with runtimes.load(bundle, trusted_keys=keys):
                pass

        for i in range(args.rounds):
            pairs = [("open, no key", lambda: open_bundle(bundle, trusted_keys=[]))]
            pairs += [("open, 1 trusted key", lambda: open_bundle(bundle, trusted_keys=[public]))]
            pairs += [("load, no key", lambda: load([])), ("load, 1 trusted key", lambda: load([public]))]
            for name, fn in pairs if i % 2 == 0 else pairs[::-1]:
                timed(name, fn)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.bundle}: {size:.1f} MB; signing it took {sign_ms:.0f} ms; medians of {args.rounds} interleaved rounds\n")
    print("| step | no key | 1 trusted key | added | ratio |")
    print("|---|---|---|---|---|")
    for step in ("open", "load"):
        a, b = med[f"{step}, no key"], med[f"{step}, 1 trusted key"]
        print(f"| {step} | {a:.1f} ms | {b:.1f} ms | {b - a:+.1f} ms | {b / a:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
