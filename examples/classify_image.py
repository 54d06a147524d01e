"""Minimal device-side embedding: load a bundle with `runtimes` alone (no torch) and classify image files.

python examples/classify_image.py BUNDLE IMAGE [IMAGE ...]
"""

import sys

import runtimes


def main(bundle: str, images: list[str]) -> int:
    try:
        predictor = runtimes.load(bundle)  # verifies manifest, sizes and checksums first
        results = predictor.predict(images, top_k=3)
    except runtimes.EdgeTransferError as exc:  # one clear line for bad bundles or images
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{predictor.describe()['backend']} on {predictor.device}")
    for path, top in zip(images, results):
        print(path, ", ".join(f"{c.label} {c.score:.1%}" for c in top))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
