"""Does pooling over chunks beat truncation for long texts? (BBC: "the encoder truncates at 256 tokens;
if you try pooling over chunks, say what it changes".) Reads a text run left by `text_end_to_end.py --out DIR`
(its data and seeded split).

    python benchmarks/text_chunk_pooling.py --work text-e2e-output [--strategy linear-probe]

Every text is cut into chunks of 254 tokens plus [CLS]/[SEP]; all-MiniLM-L6-v2 (torch) embeds each chunk; then the
same scikit-learn logistic regression (C picked on val, refit on train + val) is fitted on (a) the first chunk (what
a bundle reads) and (b) the L2-normalised mean of all chunks. Prints chunks per text and test accuracy of both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the --out of text_end_to_end.py")
    parser.add_argument("--strategy", default="linear-probe", help="whose run's data and split to use")
    args = parser.parse_args()
    import torch
    from sklearn.linear_model import LogisticRegression
    from tokenizers import Tokenizer

    from edge_transfer.model import read_run_config
    from edge_transfer.text_export import text_run_data
    from edge_transfer.text_task import create_text_backbone

    run = Path(args.work) / f"run-{args.strategy}"
    dataset, splits = text_run_data(read_run_config(run))
    bb = create_text_backbone("all-minilm-l6-v2")
    tok = Tokenizer.from_file(str(bb.tokenizer_json))
    tok.no_padding()
    tok.no_truncation()
    cls_id, sep_id, width = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), 254
    chunks, owner = [], []
    for i, text in enumerate(dataset.texts):
        ids = tok.encode(text, add_special_tokens=False).ids
        for s in range(0, max(len(ids), 1), width):
            chunks.append([cls_id, *ids[s : s + width], sep_id])
            owner.append(i)
    print(f"{len(dataset.texts)} texts -> {len(chunks)} chunks ({len(chunks) / len(dataset.texts):.2f} per text)")
    order = np.argsort([len(c) for c in chunks])
    emb = np.zeros((len(chunks), bb.dim), np.float32)
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), 32):
            rows = order[s : s + 32]
            longest = max(len(chunks[r]) for r in rows)
            ids = np.zeros((len(rows), longest), np.int64)
            mask = np.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, : len(chunks[r])] = chunks[r]
                mask[j, : len(chunks[r])] = 1
            emb[rows] = bb.encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    print(f"embedded in {time.perf_counter() - t:.0f} s")
    first = np.zeros((len(dataset.texts), bb.dim), np.float32)
    mean = np.zeros_like(first)
    seen = np.zeros(len(dataset.texts), bool)
    for k, i in enumerate(owner):
        if not seen[i]:
            first[i], seen[i] = emb[k], True
        mean[i] += emb[k]
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    y = dataset.targets
    tr, va, te = splits.train, splits.val, splits.test
    for name, x in (("first 256 tokens", first), ("mean of 256-token chunks", mean)):
        scores = [(LogisticRegression(C=c, max_iter=3000).fit(x[tr], y[tr]).score(x[va], y[va]), c) for c in (0.1, 1.0, 10.0, 100.0)]
        val, c = max(scores)
        fitted = LogisticRegression(C=c, max_iter=3000).fit(np.concatenate([x[tr], x[va]]), np.concatenate([y[tr], y[va]]))
        print(f"{name:26s} C={c:<6g} val {100 * val:.2f}%  test {100 * fitted.score(x[te], y[te]):.2f}% ({len(te)} texts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
