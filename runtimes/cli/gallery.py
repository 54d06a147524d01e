"""The `enroll` and `identify` commands: a gallery of labelled embeddings on the device, torch-free
(runtimes.gallery; an embedding bundle from `export --output embedding`)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from runtimes.errors import InputError
from runtimes.gallery import GALLERY_FILE
from runtimes.labels import shown
from runtimes.open_set import check_min_score, resolve_min_score
from runtimes.outputs import OutputRule
from runtimes.predictor import unit_rows

from .output import err, print_json
from .stream import add_stream_options, run_streams, stream_sources
from .writes import writes

GALLERY_OUT = OutputRule("file", GALLERY_FILE, make_parents=True)

IDENTIFY_CHUNK = 16


def add_gallery_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "enroll",
        help="add a label to a gallery from a few images with an embedding bundle (no torch)",
        description="Embed the images with an embedding bundle and add them to the gallery file under --label (created if "
        "absent; saved atomically). --from-folders DIR enrols every sub-folder of DIR as a label of its name. --remove "
        "drops a label; --list shows the labels. A gallery made with another embedding model is refused.",
        epilog="examples:\n  edge-transfer enroll bundles/emb/openvino-int8 --gallery parts.npz --label bracket shots/bracket/*.jpg\n"
        "  edge-transfer enroll bundles/emb/onnx --gallery parts.npz --from-folders reference_shots/\n"
        "  edge-transfer enroll bundles/emb/onnx --gallery parts.npz --remove bracket",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("bundle", help="an embedding bundle")
    e.add_argument("images", nargs="*", help="image files, folders or quoted patterns ('shots/*.jpg') to enrol under --label")
    e.add_argument("--text", action="append", metavar="TEXT", help="a text bundle: a text to enrol under --label (repeat for several)")
    e.add_argument("--text-file", metavar="FILE", help="a text bundle: texts to enrol, one per line ('-': standard input)")
    e.add_argument("--gallery", required=True, **writes(GALLERY_OUT), help="the gallery file (.npz); created if it does not exist")
    e.add_argument("--label", help="the label the images are enrolled under (added to the label's existing images)")
    e.add_argument("--from-folders", metavar="DIR", help="enrol each sub-folder of DIR as a label of its name (text bundles: of .txt files)")
    e.add_argument("--remove", metavar="LABEL", help="remove this label and its images from the gallery")
    e.add_argument("--list", action="store_true", help="list the labels and how many images each has")
    e.add_argument("--device", help="backend device (as for predict)")
    e.add_argument("--json", action="store_true", help="print the gallery's labels as JSON")
    e.set_defaults(func=cmd_enroll)

    i = sub.add_parser(
        "identify",
        help="the most similar enrolled label for each image, or unknown (no torch)",
        description="Embed each image and answer with the gallery label whose mean embedding is most similar (cosine), or "
        "'unknown' when the similarity is below the threshold (default: the gallery's own, re-derived at each enrolment; while it "
        "is too small for that, the one calibrated on held-out data at export and stored "
        "in the bundle's manifest).",
        epilog="example:\n  edge-transfer identify bundles/emb/openvino-int8 --gallery parts.npz camera/*.jpg --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("bundle", help="the embedding bundle the gallery was enrolled with")
    i.add_argument("images", nargs="*", help="image files, folders or quoted patterns")
    i.add_argument("--text", action="append", metavar="TEXT", help="a text bundle: a text to identify (repeat for several)")
    i.add_argument("--text-file", metavar="FILE", help="a text bundle: texts to identify, one per line ('-': standard input)")
    i.add_argument("--gallery", required=True, help="the gallery file")
    i.add_argument(
        "--min-score",
        "--threshold",
        dest="min_score",
        metavar="COSINE",
        help="cosine below which an image is unknown, from -1 to 1, or 'calibrated' (the default: the gallery's own, derived at "
        "enrolment; the bundle's while the gallery is too small)",
    )
    i.add_argument("--method", choices=["mean", "knn"], default="mean", help="mean: class-mean cosine (default); knn: k nearest images vote")
    i.add_argument("--k", type=int, default=5, help="neighbours that vote with --method knn (default 5)")
    i.add_argument("--recursive", action="store_true", help="read sub-folders of the folders given too")
    i.add_argument("--device", help="backend device (as for predict)")
    as_json = i.add_mutually_exclusive_group()
    as_json.add_argument("--json", action="store_true", help="one JSON document: a record per image")
    as_json.add_argument("--jsonl", action="store_true", help="one JSON line per image or frame as soon as it is answered (for pipes)")
    add_stream_options(i)
    i.set_defaults(func=cmd_identify)


def _embedding_predictor(args: argparse.Namespace) -> Any:
    import runtimes

    predictor = runtimes.load(args.bundle, device=args.device)
    if not predictor.is_embedding:
        predictor.close()
        raise InputError(f"{args.bundle} is a classifier bundle; enroll and identify need an embedding bundle (export --output embedding)")
    return predictor


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """The embedding bundle and the gallery as it is now (read-only: `Gallery.editing` changes it)."""
    from runtimes.gallery import Gallery

    predictor = _embedding_predictor(args)
    return predictor, Gallery.load(args.gallery, predictor)


def cmd_enroll(args: argparse.Namespace) -> int:
    from runtimes.gallery import Gallery, label_folders
    from runtimes.labels import check_label

    from .inputs import predict_inputs

    actions = sum(bool(x) for x in (args.label, args.from_folders, args.remove))
    if actions > 1 or (actions == 0 and not args.list):
        raise InputError("enroll takes one of --label NAME IMAGES..., --from-folders DIR or --remove LABEL (or --list)")
    given = bool(args.images or args.text or args.text_file)
    if args.label and not given:
        raise InputError(f"--label {args.label}: give the images (files, folders or patterns) or texts (--text, --text-file) to enrol")
    if given and not args.label:
        raise InputError("images or texts were given without --label NAME to enrol them under")
    if actions == 0:  # --list alone: read, never write
        predictor, gallery = _open(args)
        predictor.close()
    else:
        with _embedding_predictor(args) as predictor:
            if os.path.exists(args.gallery) or args.remove:  # another model's gallery is refused before any image is embedded
                Gallery.load(args.gallery, predictor)
            args.recursive = False
            folders = {check_label(args.label): predict_inputs(args, predictor.modality)[1]} if args.label else {}
            if args.from_folders:
                folders = label_folders(args.from_folders) if predictor.modality == "image" else _text_folders(args.from_folders)
            embedded = {label: predictor.embed(paths) for label, paths in folders.items()}  # the slow part, before the lock
            noun = predictor.input.unit[:-1]  # image or text
            with Gallery.editing(args.gallery, predictor) as gallery:  # re-read, changed and saved under a cross-process lock
                if args.remove:
                    removed = gallery.remove(args.remove)
                counts = {label: gallery.enroll(label, vectors) for label, vectors in embedded.items()}
        if args.remove:
            print(f"removed {shown(args.remove)} ({removed} {predictor.input.unit[:-1]}(s))")
        for label, count in counts.items():
            print(f"enrolled {shown(label)}: {count} {noun}(s)")
    labels = gallery.labels()
    if args.json:
        print_json(
            {
                "gallery": args.gallery,
                "labels": labels,
                "threshold": gallery.default_threshold,
                "threshold_source": gallery.threshold_source,
                "threshold_calibration": gallery.threshold_calibration,
            }
        )
    elif args.list or not args.remove:
        summary = f"{args.gallery}: {len(labels)} label(s), {len(gallery)} {predictor.input.unit[:-1]}(s)"
        print(f"{summary}; unknown below cosine {gallery.default_threshold:.4f} ({gallery.threshold_source})")
        if (expected := gallery.expected_rates()) is not None:
            print(expected)
        if args.list:
            for name, n in labels.items():
                print(f"  {n:4d}  {shown(name)}")
    return 0


def _text_folders(root: str) -> dict[str, list[str]]:
    """A text bundle's `--from-folders`: class folders of .txt files -> {label: texts} (`runtimes.text_data`)."""
    from runtimes.text_data import load_text_folder

    data = load_text_folder(root)
    return {label: [t for t, y in zip(data.texts, data.targets) if int(y) == i] for i, label in enumerate(data.classes)}


def cmd_identify(args: argparse.Namespace) -> int:
    from runtimes.gallery import threshold_problem

    from .device import shown_text
    from .inputs import predict_inputs

    check_min_score(args.min_score, lowest=-1.0)  # a bad value is refused before the bundle is read
    predictor, gallery = _open(args)
    args.threshold = resolve_min_score(args.min_score, gallery.default_threshold, what=args.gallery, lowest=-1.0)
    sources = stream_sources(args)
    kind, images = predict_inputs(args, predictor.modality) if sources is None else ("image", [])
    records = []
    in_use = (args.threshold, "--min-score") if args.threshold is not None else (gallery.default_threshold, gallery.threshold_source)
    err(f"identify: unknown below cosine {in_use[0]:.4f} ({in_use[1]})")
    if args.threshold is None and gallery.threshold_calibration is None and (problem := threshold_problem(predictor.manifest.embedding)) is not None:
        err(f"warning: {problem}")
    if sources is not None:
        with predictor:
            return run_streams(
                args,
                predictor,
                sources,
                answer=lambda out: gallery.identify(unit_rows(out, args.bundle), threshold=args.threshold, method=args.method, k=args.k),
                record_of=lambda a: a.to_dict(),
                line_of=_identified,
                header={"bundle": args.bundle, "gallery": args.gallery, "threshold": in_use[0], "method": args.method},
            )
    with predictor:
        for start in range(0, len(images), IDENTIFY_CHUNK):
            chunk = images[start : start + IDENTIFY_CHUNK]
            answers = gallery.identify(predictor.embed(chunk), threshold=args.threshold, method=args.method, k=args.k)
            for path, a in zip(chunk, answers):
                records.append({kind: path, **a.to_dict()})
                if args.jsonl:
                    print(json.dumps(records[-1]), flush=True)
                elif not args.json:
                    print(f"{path if kind == 'image' else shown_text(path)}: {_identified(a)}", flush=True)
    if args.json:
        threshold = args.threshold if args.threshold is not None else gallery.default_threshold
        print_json({"bundle": args.bundle, "gallery": args.gallery, "threshold": threshold, "method": args.method, "identifications": records})
    return 0


def _identified(a: Any) -> str:
    """One identification for people: the label and its cosine, or unknown with the nearest label."""
    return (
        f"{shown(a.label)}  (cosine {a.score:.3f})" if a.known else f"unknown  (nearest {shown(a.nearest)}, cosine {a.score:.3f} < {a.threshold:.3f})"
    )
