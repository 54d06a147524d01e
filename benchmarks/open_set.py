"""Answering "none of these": how each unknown rule holds up when the queries differ from what the model
or the gallery saw.

    python benchmarks/open_set.py [--splits 10] [--image-size 160] [--work /tmp/open-set]

Data (tests/photo_crops.py): one class per skimage photo. Per split, 12 photos are known and 8 never taught. Training
and enrolment crops come from the left half of each known photo, queries from the right half; never-taught photos
give crops from anywhere. Per split, a linear probe on EfficientNet-Lite0 is trained on the left-half crops and
exported as an onnx classifier and an onnx embedding bundle. Then:
- classifier: `val` on the queries with the floor calibrated at export (`runtimes.open_set`), and with no floor;
- gallery, 5 shots per known photo, class means: the threshold calibrated at export on held-out data, the one the
  gallery derives from itself at enrolment (`runtimes.gallery.gallery_threshold`), and a margin rule (best minus
  second-best cosine, its cut chosen the same leave-one-out way) for comparison.
- classifier scores compared: the shipped calibration applied to other scores of the same logits (centred max-logit,
  max logit, top-2 margin), on the same held-out split.
Each row gives the known queries kept and right, and the never-taught crops answered unknown: mean and worst split,
and how many splits meet both bars (>= 90% kept and right, >= 80% answered unknown).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def best_separation(known: np.ndarray, right: np.ndarray, strangers: np.ndarray) -> float:
    """The cut maximising known-and-right kept plus strangers turned away (leave-one-out scores)."""
    ok = ~np.isnan(known)
    known, right = known[ok], right[ok]
    cuts = np.unique(np.concatenate([known, strangers]))
    return float(cuts[int(np.argmax([np.mean(right & (known >= c)) + np.mean(strangers < c) for c in cuts]))])


def gallery_rows(predictor, crops: Path) -> dict[str, tuple[float, float]]:
    """{rule: (known kept and right, unknown rejected)} for a 5-shot gallery enrolled from crops/enrol."""
    from runtimes.gallery import Gallery
    from runtimes.gallery_threshold import _loo_scores, _owners
    from runtimes.preprocess import image_files

    gallery = Gallery.for_bundle(predictor)
    export_threshold = gallery.default_threshold
    gallery.enroll_folders(predictor, crops / "enrol")
    folders = {d.name: image_files(d) for d in sorted((crops / "query").iterdir())}
    known = {k: v for k, v in folders.items() if k != "unknown"}
    kq = predictor.embed([p for paths in known.values() for p in paths])
    truth = [k for k, paths in known.items() for _ in paths]
    uq = predictor.embed(folders["unknown"])
    rows = {}
    for rule, t in (("exported threshold", export_threshold), ("derived from the gallery", gallery.default_threshold)):
        k = gallery.identify(kq, threshold=t)
        u = gallery.identify(uq, threshold=t)
        rows[rule] = (float(np.mean([a.label == y for a, y in zip(k, truth)])), float(np.mean([not a.known for a in u])))
    vectors, labels = gallery._vectors.astype(np.float64), list(gallery._labels)
    names = list(dict.fromkeys(labels))
    owner = _owners(labels, names)
    own, right, stranger = _loo_scores(vectors, owner, len(names))
    means = np.stack([vectors[owner == c].sum(0) for c in range(len(names))])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    others = vectors @ means.T
    others[np.arange(len(vectors)), owner] = -np.inf
    second = np.sort(others, axis=1)[:, -2]  # as a stranger: its best and second-best other label
    cut = best_separation(own - stranger, right, stranger - second)

    def margin(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ means.T
        top2 = np.sort(sims, axis=1)[:, -2:]
        return sims.argmax(1), top2[:, 1] - top2[:, 0]

    k_best, k_margin = margin(kq)
    _, u_margin = margin(uq)
    right_q = np.asarray([names[b] == y for b, y in zip(k_best, truth)])
    rows["margin: best minus second-best cosine"] = (float(np.mean(right_q & (k_margin >= cut))), float(np.mean(u_margin < cut)))
    return rows


def _log_top1_probability(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return -np.log(np.exp(z).sum(axis=1))  # log of the top-1 softmax probability


def _finite(logits: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(logits), logits, np.nan)


CLASSIFIER_SCORES = {  # score(logits) -> one number per row; a row answers at the floor or more
    "top-1 probability (shipped)": _log_top1_probability,
    "centred max-logit (max minus mean)": lambda z: np.nanmax(_finite(z), axis=1) - np.nanmean(_finite(z), axis=1),
    "max logit": lambda z: np.nanmax(_finite(z), axis=1),
    "margin: best minus second-best logit": lambda z: np.diff(np.sort(np.where(np.isfinite(z), z, -1e30), axis=1)[:, -2:], axis=1)[:, 0],
}


def classifier_score_rows(predictor, crops: Path) -> dict[str, tuple[float, float]]:
    """{score: (known kept and right, unknown rejected)}: each score with the shipped calibration (stand-in strangers:
    held-out logits less their own class; the floor halfway between the best stand-in and the best separating
    score), on the export's held-out split. The first row is what `runtimes.open_set` ships (halfway in log-probability)."""
    from edge_transfer.data import load_dataset, stratified_split
    from runtimes.preprocess import image_files

    dataset = load_dataset(str(crops / "train"))
    test = stratified_split(dataset.targets, seed=0, classes=dataset.classes).test
    held, targets = predictor.run_chunked(dataset.prepared_batch(test, predictor.manifest.preprocessing)), dataset.targets[test]
    labels = list(predictor.labels)
    known = [(f, labels.index(d.name)) for d in sorted((crops / "query").iterdir()) if d.name != "unknown" for f in image_files(d)]
    k_logits = predictor.run_chunked(predictor.prepare([f for f, _ in known]))
    k_right = k_logits.argmax(1) == np.asarray([t for _, t in known])
    u_logits = predictor.run_chunked(predictor.prepare(image_files(crops / "query" / "unknown")))
    stand_ins = held.astype(np.float64)
    stand_ins[np.arange(len(targets)), targets] = -np.inf
    rows = {}
    for name, score in CLASSIFIER_SCORES.items():
        s_known, s_stand = score(held), score(stand_ins)
        floor = (s_stand.max() + best_separation(s_known, held.argmax(1) == targets, s_stand)) / 2
        rows[name] = (float(np.mean(k_right & (score(k_logits) >= floor))), float(np.mean(score(u_logits) < floor)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=160)
    ap.add_argument("--work", default="/tmp/open-set")
    args = ap.parse_args()
    from photo_crops import split_photos, write_photo_crops

    import edge_transfer as et
    import runtimes
    from runtimes.evaluate import evaluate

    results: dict[str, list[tuple[float, float]]] = {}
    for seed in range(args.splits):
        work = Path(args.work) / f"split-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        known, never = split_photos(seed)
        crops = write_photo_crops(work / "crops", known, never, seed=seed)
        run = et.train(str(crops / "train"), out=work / "run", strategy="linear-probe", image_size=args.image_size, progress=False)
        classifier = et.export(run.path, out=work / "classifier")[0].path
        embedding = et.export(run.path, out=work / "embedding", output="embedding")[0].path
        with runtimes.load(classifier) as p:
            floor = p.calibrated_min_score
            for rule, t in (("classifier, no floor", None), ("classifier, floor calibrated at export", floor)):
                o = evaluate(p, crops / "query", min_score=t).open_set or {}
                results.setdefault(rule, []).append((o["kept_and_right"], o["unknown_rejected"]))
            for score, pair in classifier_score_rows(p, crops).items():
                results.setdefault(f"classifier score, same calibration: {score}", []).append(pair)
        with runtimes.load(embedding) as p:
            for rule, pair in gallery_rows(p, crops).items():
                results.setdefault(f"gallery, {rule}", []).append(pair)
        print(f"split {seed}: known {', '.join(known)}; never {', '.join(never)}; floor {floor}", file=sys.stderr)
    print(f"\n{args.splits} splits, 12 known photos (15 right-half queries each), 8 never taught (15 crops each), {args.image_size} px\n")
    print("| rule | known kept and right: mean (worst) | never-taught answered unknown: mean (worst) | splits meeting both |")
    print("|---|---|---|---|")
    for rule, pairs in results.items():
        kept, rejected = np.asarray(pairs).T
        both = int(np.sum((kept >= 0.9) & (rejected >= 0.8)))
        print(
            f"| {rule} | {100 * kept.mean():.1f}% ({100 * kept.min():.1f}%) | {100 * rejected.mean():.1f}% ({100 * rejected.min():.1f}%) "
            f"| {both}/{len(pairs)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
