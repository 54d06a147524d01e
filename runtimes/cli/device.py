"""Device commands of the CLI (predict, inspect, check, build-engine): `runtimes` and one backend only."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from runtimes.bundle import BUNDLE
from runtimes.engines.tensorrt_engine import ENGINE_CACHE
from runtimes.errors import EdgeTransferError, InputError
from runtimes.open_set import check_min_score, resolve_min_score
from runtimes.outputs import OutputRule

from .fleet import add_key_option, trusted_keys_option
from .inputs import predict_inputs
from .output import (
    BATCH_HELP,
    MIN_SCORE_HELP,
    PRECISION_CHOICES,
    PRECISION_HELP,
    bad,
    batch_option,
    err,
    is_number,
    num,
    only_errors_from,
    pct,
    precision_option,
    print_json,
    unknown_record,
)
from .stream import add_stream_options, run_streams, stream_sources, top_k_line
from .writes import writes


def add_predict_parser(sub: Any) -> None:
    pr = sub.add_parser(
        "predict",
        help="classify images or texts with a bundle (needs only runtimes + its backend)",
        description="Classify image files, folders or patterns (an image bundle), or texts given with --text / --text-file "
        "(a text bundle); results are printed as they come, 16 at a time. Videos, streams and cameras: frame by frame "
        "(see below).",
    )
    pr.add_argument("bundle")
    pr.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders (their images, sorted) or quoted patterns ('shots/*.jpg')")
    pr.add_argument("--text", action="append", metavar="TEXT", help="a text to classify (a text bundle; repeat for several)")
    pr.add_argument("--text-file", metavar="FILE", help="texts to classify, one per line ('-': standard input); blank lines are skipped")
    pr.add_argument("--recursive", action="store_true", help="folders: the images in their sub-folders too")
    pr.add_argument("--skip-bad", action="store_true", help="report unreadable images and go on, instead of stopping at the first")
    pr.add_argument("--top-k", type=int, default=5, help="how many classes to list per input, best first (default 5)")
    pr.add_argument("--classes", metavar="FILE", help="classes added on the device (edge-transfer imprint) to rank with the bundle's")
    pr.add_argument("--device", help="backend device (onnxruntime: cpu, cuda, tensorrt; openvino: cpu, gpu, npu, auto; default cpu)")
    pr.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    pr.add_argument("--batch", type=int, metavar="N", help=BATCH_HELP)
    pr.add_argument("--min-score", metavar="S", help=MIN_SCORE_HELP)
    as_json = pr.add_mutually_exclusive_group()
    as_json.add_argument("--json", action="store_true", help="one JSON document at the end: the runtime, then a record per input")
    as_json.add_argument("--jsonl", action="store_true", help="one JSON line per input as soon as it is classified (for pipes)")
    add_stream_options(pr)
    pr.set_defaults(func=cmd_predict)


def add_check_parser(sub: Any) -> None:
    c = sub.add_parser(
        "check",
        help="run a bundle's self-test on this device (torch-free): PASS/FAIL, exit 0/1 (2: refused)",
        description="Run the bundle's golden images through its backend here and compare with the torch fp32 reference "
        "stored at export, within the tolerances its gate measured. Prints backend, device, the precision "
        "actually used, the CPU features that matter (VNNI, bf16, fp16), agreement and error, then PASS or "
        "FAIL; exits 1 with one 'error:' line on FAIL (or when the bundle has no self-test data), and 2 when the bundle is "
        "refused before it runs (it does not verify, is not signed by a trusted key, or an extra is missing).",
    )
    c.add_argument("bundle")
    c.add_argument("--device", help="backend device (as for predict; default cpu)")
    c.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    c.add_argument("--batch", type=int, metavar="N", help=BATCH_HELP)
    add_key_option(c)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    import runtimes
    from runtimes.cpu import cpu_features

    options = {**precision_option(args), **batch_option(args), **trusted_keys_option(args)}
    with only_errors_from("runtimes.predictor"), runtimes.load(args.bundle, device=args.device, **options) as predictor:
        signed_by = predictor.bundle.signed_by
        result = predictor.self_test(raise_on_failure=False)  # the load-time warnings are reported below, once
        info = predictor.describe()
        warnings = list(predictor.warnings)
    from runtimes.gallery import threshold_problem

    notices = [p for p in (threshold_problem(predictor.manifest.embedding),) if p]  # flagged, not failed: the model is right
    cpu = cpu_features()
    failures = [] if result.passed else [result.summary()]
    failures += warnings
    report = {
        "bundle": args.bundle,
        "backend": info["backend"],
        "device": info["device"],
        "precision": info["precision"],
        "inference_precision": info.get("inference_precision"),
        **({"loaded_batch": info["loaded_batch"]} if "loaded_batch" in info else {}),
        "cpu": cpu.to_dict(),
        "self_test": result.to_dict(),
        "validation_passed": info.get("validation_passed"),  # the export gate, as the manifest records it
        "signed_by": signed_by,  # the trusted key that signed it; None when no key is trusted here
        "warnings": warnings,
        "notices": notices,
        "passed": not failures,
    }
    if args.json:
        print_json(report)
    else:
        print(f"bundle     {args.bundle} ({info['format']}, {info['precision']})" + (f", loaded for batch {args.batch}" if args.batch else ""))
        print(f"runtime    {info['backend']} on {info['device']}, computing in {info['computes']}")
        print(f"cpu        {cpu.summary()}")
        print(f"signature  {signature_line(Path(args.bundle), signed_by)}")
        if info.get("validation_passed") is False:
            print("gate       FAILED at export: written only because --allow-failed-validation was given; do not ship it")
        print(result.summary())
        for w in warnings:
            print(f"warning    {w}")
        for n in notices:
            print(f"notice     {n}")
        print("PASS" if not failures else "FAIL")
    if failures:
        err(f"error: {args.bundle}: " + "; ".join(failures))
        return 1
    return 0


def signature_line(bundle: Path, signed_by: str | None) -> str:
    from runtimes.signature_format import SIGNATURE_NAME
    from runtimes.signing import KEYS_ENV

    if signed_by:
        return f"signed by trusted key {signed_by[:12]}"
    if (bundle / SIGNATURE_NAME).is_file():
        return f"{SIGNATURE_NAME} is present but NOT verified: no key is trusted here (--key PUB or {KEYS_ENV})"
    return f"unsigned, and not checked: no trusted key (--key PUB or {KEYS_ENV})"


PREDICT_CHUNK = 16  # images decoded and run together; results are printed after each chunk


def cmd_predict(args: argparse.Namespace) -> int:
    import runtimes

    check_min_score(args.min_score)
    predictor = runtimes.load(args.bundle, device=args.device, **precision_option(args), **batch_option(args))  # a wrong bundle first
    sources = stream_sources(args)
    floor = resolve_min_score(args.min_score, predictor.calibrated_min_score, what=args.bundle) if not predictor.is_embedding else None
    if sources is not None:
        if args.classes:
            raise InputError("--classes is for image files and folders; videos and cameras use the bundle's own classes")
        return run_streams(
            args,
            predictor,
            sources,
            answer=lambda logits: predictor.classify(logits, args.top_k),
            record_of=lambda top: {**unknown_record(top, floor), "top_k": [c.to_dict() for c in top]},
            line_of=lambda top: top_k_line(top, floor),
            header={"bundle": args.bundle, "runtime": predictor.describe(), "min_score": floor},
        )
    kind, images = predict_inputs(args, predictor.modality)
    classify = predictor.predict
    if args.classes:
        from .imprint import open_added

        added = open_added(args.bundle, args.classes, predictor)
        classify = functools.partial(added.predict, predictor)
    failed = 0
    records: list[dict[str, Any]] = []
    for start in range(0, len(images), PREDICT_CHUNK):
        chunk = images[start : start + PREDICT_CHUNK]
        try:
            outcomes: list[Any] = list(classify(chunk, top_k=args.top_k))
        except InputError:
            if not args.skip_bad:
                raise
            outcomes = [_predict_one(classify, img, args.top_k) for img in chunk]  # find the unreadable one(s)
        for img, r in zip(chunk, outcomes):
            record = {kind: img, "error": r} if isinstance(r, str) else {kind: img, **unknown_record(r, floor), "top_k": [c.to_dict() for c in r]}
            failed += isinstance(r, str)
            if args.jsonl:
                print(json.dumps(record), flush=True)
            elif args.json:
                records.append(record)
            else:
                _print_prediction(img if kind == "image" else shown_text(img), r, floor)
    if args.json:
        print_json({"bundle": args.bundle, "runtime": predictor.describe(), "min_score": floor, "predictions": records})
    if failed:
        err(f"{failed} of {len(images)} {kind}(s) could not be read (left out by --skip-bad)")
    return 0


def shown_text(text: str, width: int = 72) -> str:
    """A text on one line, cut to `width` characters, for printed results."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def _predict_one(classify: Any, img: str, top_k: int) -> Any:
    try:
        return classify([img], top_k=top_k)[0]
    except InputError as exc:
        return str(exc)


def _print_prediction(img: str, r: Any, floor: float | None = None) -> None:
    print(img)
    if isinstance(r, str):
        print(f"  unreadable: {r}")
    else:
        if floor is not None and r[0].score < floor:
            print(f"  unknown (the best, {r[0].label}, scores {r[0].score:.2%} < {floor:.2%})")
        for c in r:
            print(f"  {c.score:7.2%}  {c.label}")
    sys.stdout.flush()


def add_inspect_parser(sub: Any) -> None:
    i = sub.add_parser(
        "inspect", help="verify a bundle and show its manifest", description="Verify checksums and schema, then summarise the manifest."
    )
    i.add_argument("bundle")
    add_key_option(i)
    i.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    i.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from runtimes.bundle import open_bundle

    bundle = open_bundle(args.bundle, **trusted_keys_option(args))
    m = bundle.manifest
    if args.json:
        print_json(dict(m.raw, verified=True))
        return 0
    v = m.validation or {}
    print(f"bundle      {bundle.path}  (verified: {len(m.files)} file(s), {bundle.size_bytes / 1e6:.2f} MB)")
    print(f"signature   {signature_line(bundle.path, bundle.signed_by)}")
    print(f"model       {m.backend} / {m.format} / {m.precision}, created {m.created}")
    for spec in m.inputs:
        print(f"input       {spec.name} {spec.dtype} {list(spec.shape)} {spec.layout or ''}")
    print(f"output      {m.outputs[0].name} {m.outputs[0].dtype} {list(m.outputs[0].shape)}")
    print(f"preprocess  {m.input_summary()}")
    if m.embedding is not None:
        e, t = m.embedding, m.embedding.get("unknown_threshold")
        unknown = f"unknown below cosine {t:.4f}" if t is not None else "no calibrated unknown threshold"
        print(f"embedding   {e['dim']}-d, {e['normalization']}-normalised, from {', '.join(e.get('layers') or ['final'])}; {unknown}")
    else:
        print(f"labels      {len(m.labels)}: {', '.join(m.labels[:5])}{' ...' if len(m.labels) > 5 else ''}")
        if m.open_set is not None:
            floor, kept = pct(m.open_set["min_score"]), pct(m.open_set.get("known_kept"))
            print(f"open set    unknown below a top-1 score of {floor} with --min-score calibrated ({kept} of held-out kept and right)")
    src = m.source
    print(
        f"source      {src.get('backbone', '?')} ({src.get('weights', '?')}), strategy {src.get('strategy', '?')}, licence {src.get('license', '?')}"
    )
    cal = m.calibration
    if cal:
        print(
            f"calibration {cal.get('count')} images from {cal.get('split')} of {cal.get('source')} ({cal.get('method')}), "
            f"items sha256 {str(cal.get('items_sha256'))[:12]}"
        )
    if m.conversion is not None and not isinstance(m.conversion, dict):
        print(f"conversion  {bad(m.conversion)}")
    conversion = m.conversion if isinstance(m.conversion, dict) else {}
    floats = conversion.get("float_layers") or conversion.get("float_nodes")
    if isinstance(floats, list) and floats:
        first = conversion.get("float_first_layers")
        if isinstance(first, int) and not isinstance(first, bool) and 0 <= first <= len(floats):
            more = [str(f) for f in floats[first:]]
            rest = f" and {len(more)} more ({', '.join(more[:3])}{' ...' if len(more) > 3 else ''})" if more else ""
            print(f"in float    {len(floats)} layer(s): the first {first} weight layer(s) (--float-first-layers){rest}")
        else:
            print(f"in float    {len(floats)} layer(s): {', '.join(map(str, floats[:3]))}{' ...' if len(floats) > 3 else ''}")
    if v:
        print(
            f"validation  {'passed' if v.get('passed') is True else 'FAILED'} on {v.get('split')} ({v.get('count')} images): "
            f"agreement {pct(v.get('top1_agreement'))}, max |diff| {num(v.get('max_abs_logit_diff'))}, "
            f"accuracy torch {pct(v.get('torch_accuracy'))} / bundle {pct(v.get('artifact_accuracy'))}"
            + (
                f", drop {num(100 * v['accuracy_drop'] if is_number(v['accuracy_drop']) else v['accuracy_drop'], '+.2f')} pt"
                if v.get("accuracy_drop") is not None
                else ""
            )
            + (f", at {v['inference_precision']}" if isinstance(v.get("inference_precision"), str) else "")
        )
    target = m.target_cpu
    if isinstance(target, dict):
        print(f"target cpu  {target.get('name')} ({'7-bit' if target.get('reduce_range') else 'full 8-bit'} weights)")
    st = m.self_test
    if isinstance(st, dict):
        print(f"self-test   {st.get('count')} golden images vs {st.get('reference_from')} (edge-transfer check BUNDLE)")
    else:
        print("self-test   none (exported before self-tests; re-export to get one)")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    import time

    import runtimes
    from runtimes.bench import labelled_accuracy

    manifest = runtimes.read_manifest(args.bundle)
    if manifest.backend != "tensorrt":
        raise EdgeTransferError(f"{args.bundle}: a {manifest.backend} bundle; build-engine needs one exported with --format tensorrt[-fp16|-int8]")
    if manifest.format != "onnx":
        raise EdgeTransferError(f"{args.bundle}: already carries a built engine ({manifest.format}); build-engine needs the ONNX bundle")
    if args.out:  # refused before the (long) build: never over the source bundle, its --data, or files not ours
        from runtimes.bundle import BUNDLE
        from runtimes.outputs import Protected, check_output_dir

        check_output_dir(
            args.out, BUNDLE, overwrite=args.overwrite, protected=[Protected("the source bundle", args.bundle), Protected("--data", args.data)]
        )
    t0 = time.perf_counter()
    with runtimes.load(args.bundle, cache_dir=args.cache_dir) as predictor:  # build progress: the runtimes logger
        info = predictor.describe()
        info["load_seconds"] = round(time.perf_counter() - t0, 2)
        if args.data:
            info["accuracy"] = labelled_accuracy(predictor, args.data)
        if args.out:
            predictor.write_engine_bundle(args.out, overwrite=args.overwrite)  # type: ignore[attr-defined]  # TensorRT predictors
            info["engine_bundle"] = args.out
    if args.json:
        print_json(info)
    else:
        trt = info["tensorrt"]
        print(
            f"engine for {trt['gpu_name']} (sm {trt['compute_capability']}, TensorRT {trt['tensorrt_version']}), "
            f"{info['precision']}, batch {info['profile']['min']}-{info['profile']['max']}: {info['engine']} "
            f"(ready in {info['load_seconds']} s)"
        )
        if "engine_bundle" in info:
            print(f"wrote engine bundle {info['engine_bundle']} (loads only on this TensorRT version and this GPU model)")
        if "accuracy" in info:
            exported = (manifest.validation or {}).get("artifact_accuracy")
            print(
                f"accuracy on {args.data}: {pct(info['accuracy'])}"
                + (f" (the ONNX checked at export: {pct(exported)})" if exported is not None else "")
            )
    return 0


def add_build_engine_parser(sub: Any) -> None:
    g = sub.add_parser(
        "build-engine",
        help="build (or reuse) this device's TensorRT engine for a TensorRT bundle",
        description="Build the TensorRT engine for this GPU from a bundle's TensorRT-ready ONNX and cache it (keyed by model hash, "
        "TensorRT version, compute capability, precision and profile); later loads reuse it. A corrupt or "
        "mismatched cache entry is rebuilt, never loaded. Needs TensorRT and cuda-python (JetPack on Jetson).",
    )
    g.add_argument("bundle")
    g.add_argument(
        "--cache-dir",
        **writes(OutputRule("cache", ENGINE_CACHE)),
        help="engine cache (default $EDGE_TRANSFER_CACHE/engines or ~/.cache/edge-transfer/engines)",
    )
    g.add_argument("--data", help="labelled image folder: check the engine's accuracy on this device")
    g.add_argument(
        "--out",
        **writes(OutputRule("dir", BUNDLE)),
        help="also write a bundle carrying the built engine, for identical devices (same TensorRT and GPU)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out bundle")
    g.add_argument("--json", action="store_true")
    g.add_argument("--quiet", action="store_true", help="no build progress")
    g.set_defaults(func=cmd_build_engine)
