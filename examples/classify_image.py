"""Minimal device-side embedding: load a bundle with `runtimes` alone (no torch) and classify image files.

python examples/classify_image.py BUNDLE IMAGE [IMAGE ...]

An image that cannot be read is reported on its own line and the others are still classified; the exit status is 1
when any image failed, 2 when the bundle itself cannot be used.
"""

import sys

import runtimes


def main(bundle: str, images: list[str]) -> int:
    try:
        predictor = runtimes.load(bundle)  # verifies manifest, sizes and checksums first
    except runtimes.EdgeTransferError as exc:  # one clear line for a bad bundle
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with predictor:
        print(f"{predictor.describe()['backend']} on {predictor.device}")
        for path in images:  # one at a time: a bad file costs only its own answer
            try:
                (top,) = predictor.predict([path], top_k=3)
            except runtimes.InputError as exc:
                print(f"{path}: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(path, ", ".join(f"{c.label} {c.score:.1%}" for c in top))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
