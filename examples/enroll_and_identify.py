"""Enrol new objects from a few images, then recognise them: the face-recognition workflow with any embedding
bundle, on the device (`runtimes` + numpy, no torch, no retraining).

    # a reference folder with one sub-folder per object (a few images each), then images to identify
    python examples/enroll_and_identify.py BUNDLE --enrol reference/ --gallery objects.npz shots/*.jpg

    # later: the saved gallery, new images (or camera frames saved as .npy / image files)
    python examples/enroll_and_identify.py BUNDLE --gallery objects.npz frames/

BUNDLE comes from `edge-transfer export --backbone efficientnet_lite0 --output embedding --data held_out/` (or
`export RUN --output embedding` for a trained run's features). Images whose best cosine similarity is below the
bundle's calibrated threshold (override with --threshold) are reported as unknown: enrol them to add the object.
"""

from __future__ import annotations

import argparse
import os
import sys

import runtimes
from runtimes.gallery import Gallery
from runtimes.preprocess import expand_image_paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="an embedding bundle")
    ap.add_argument("images", nargs="*", help="images, folders or patterns to identify")
    ap.add_argument("--gallery", required=True, help="gallery file: loaded if it exists, saved after --enrol")
    ap.add_argument("--enrol", metavar="DIR", help="enrol each sub-folder of DIR as an object")
    ap.add_argument("--threshold", type=float, help="cosine below which an image is unknown (default: the bundle's)")
    args = ap.parse_intermixed_args(argv)  # images may come after the options
    try:
        with runtimes.load(args.bundle) as predictor:
            gallery = Gallery.load(args.gallery, predictor) if os.path.exists(args.gallery) else Gallery.for_bundle(predictor)
            if args.enrol:  # each sub-folder of DIR is an object, enrolled from its images
                for name, count in gallery.enroll_folders(predictor, args.enrol).items():
                    print(f"enrolled {name} from {count} image(s)")
                gallery.save(args.gallery)  # atomic: a crash leaves the previous gallery
            if not len(gallery):
                raise runtimes.InputError("the gallery is empty: pass --enrol DIR first")
            paths = expand_image_paths(args.images) if args.images else []
            for start in range(0, len(paths), 16):
                chunk = paths[start : start + 16]
                for path, answer in zip(chunk, gallery.identify(predictor.embed(chunk), threshold=args.threshold)):
                    name = answer.label if answer.known else f"unknown (closest: {answer.nearest})"
                    print(f"{path}: {name}  cosine {answer.score:.3f}")
    except runtimes.EdgeTransferError as exc:  # bad bundle, foreign or damaged gallery, unreadable image: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
