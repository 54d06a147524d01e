"""The `imprint` command: classes added on the device to an extensible classifier bundle, torch-free
(runtimes.imprint; the bundle from `export RUN --output extensible`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from runtimes.errors import InputError
from runtimes.imprint import ADDED_CLASSES_FILE
from runtimes.labels import shown
from runtimes.outputs import OutputRule

from .output import print_json
from .writes import writes

ADDED_FILE = OutputRule("file", ADDED_CLASSES_FILE, make_parents=True)


def add_imprint_parser(sub: Any) -> None:
    p = sub.add_parser(
        "imprint",
        help="add a class to a trained classifier from a few images, on the device (no torch)",
        description="Add --label to an extensible classifier bundle (export RUN --output extensible) from a few images: one "
        "new row of its head, fitted in numpy against the replay features the bundle carries; the bundle's own classes "
        "are never changed. The added classes live in a file (--classes, created if absent, saved atomically); "
        "predict BUNDLE --classes FILE uses them. --remove drops an added class; --list shows them.",
        epilog="examples:\n  edge-transfer imprint bundles/digits/openvino-int8 --classes added.npz --label nine shots/nine/*.png\n"
        "  edge-transfer predict bundles/digits/openvino-int8 --classes added.npz camera/*.png\n"
        "  edge-transfer imprint bundles/digits/openvino-int8 --classes added.npz --remove nine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", help="an extensible classifier bundle")
    p.add_argument("images", nargs="*", help="image files, folders or quoted patterns of the class to add")
    p.add_argument("--classes", required=True, **writes(ADDED_FILE), help="the file of added classes (.npz); created if it does not exist")
    p.add_argument("--label", help="the class to add (images added to an added class fit its row again)")
    p.add_argument(
        "--method",
        choices=["fit", "mean"],
        default="fit",
        help="fit: the imprinted row fitted against replay features "
        "(default; keeps old classes' accuracy); mean: plain imprinting (scaled mean feature; costs old classes)",
    )
    p.add_argument("--remove", metavar="LABEL", help="remove this added class")
    p.add_argument("--list", action="store_true", help="list the bundle's classes and the added ones")
    p.add_argument("--device", help="backend device (as for predict)")
    p.add_argument("--json", action="store_true", help="print the classes as JSON")
    p.set_defaults(func=cmd_imprint)


def require_extensible(bundle: str, predictor: Any) -> None:
    if not predictor.is_extensible:
        raise InputError(f"{bundle} has no features output to add classes from; export the run with --output extensible")


def open_added(bundle: str, path: str, predictor: Any) -> Any:
    """The added classes of `path` as they are now, for `predictor`'s extensible bundle (read-only)."""
    from runtimes.imprint import AddedClasses

    require_extensible(bundle, predictor)
    return AddedClasses.load(path, predictor)


def cmd_imprint(args: argparse.Namespace) -> int:
    import runtimes
    from runtimes.imprint import AddedClasses
    from runtimes.labels import check_label
    from runtimes.preprocess import expand_image_paths

    if (args.label and args.remove) or (not args.label and not args.remove and not args.list):
        raise InputError("imprint takes one of --label NAME IMAGES... or --remove LABEL (or --list)")
    if args.label and not args.images:
        raise InputError(f"--label {args.label}: give the images of the class (files, folders or patterns)")
    if args.images and not args.label:
        raise InputError("images were given without --label NAME to add them under")
    with runtimes.load(args.bundle, device=args.device) as predictor:
        if not args.label and not args.remove:  # --list alone: read, never write
            added = open_added(args.bundle, args.classes, predictor)
        else:
            require_extensible(args.bundle, predictor)
            if os.path.exists(args.classes) or args.remove:  # another model's file is refused before any image is read
                AddedClasses.load(args.classes, predictor)
            features = None
            if args.label:
                check_label(args.label)
                _, features = predictor.logits_and_features(expand_image_paths(args.images))  # before the lock: the slow part
            with AddedClasses.editing(args.classes, predictor) as added:  # re-read, fitted and saved under a cross-process lock
                if features is None:
                    added.remove(args.remove)
                else:
                    added.add(args.label, features, method=args.method)
            if args.label:
                print(f"added {shown(args.label)}: a new row from {added.added()[args.label]} image(s) ({args.method})")
            else:
                print(f"removed {shown(args.remove)}")
    if args.json:
        print_json({"classes": args.classes, "bundle_labels": list(added.base_labels), "added": added.added()})
    else:
        print(f"{args.classes}: {len(added.base_labels)} class(es) of the bundle + {len(added.added())} added")
        if args.list:
            for name, n in added.added().items():
                print(f"  added  {shown(name)}  ({n} image(s))")
    return 0
