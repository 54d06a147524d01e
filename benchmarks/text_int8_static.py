"""Static (calibrated) against dynamic int8 on ONNX Runtime for a text run (the question: "onnx-int8 per-channel dynamic by
default, or static if it measures better"). Reads what `text_end_to_end.py --out DIR` left: the finetune run and its
`onnx` and `onnx-int8` bundles.

    python benchmarks/text_int8_static.py --work text-e2e-output [--strategy finetune] [--rounds 60]

Makes a static QDQ int8 model of the fp32 graph (ONNX Runtime `quantize_static`, MinMax on `--calibration` training
texts, one per call; per-channel int8 weights, uint8 activations, MatMul/Gemm), then prints accuracy on the run's
test split (one text per call) and batch-1 latency at 32 and 256 tokens for fp32, dynamic and static, interleaved in
one process, with the ratio against fp32 of the same run. The entropy and percentile calibrators need equal shapes
and refuse texts of different lengths, so MinMax only. Numbers are for this machine only.
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
    parser.add_argument("--strategy", default="finetune")
    parser.add_argument("--calibration", type=int, default=300, help="training texts to calibrate on")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timed rounds per length")
    args = parser.parse_args()
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edge_transfer.model import read_run_config
    from edge_transfer.text_export import text_run_data
    from runtimes.tokenize import TextTokenizer

    work = Path(args.work)
    run, bundles = work / f"run-{args.strategy}", work / f"bundles-{args.strategy}"
    config = read_run_config(run)
    dataset, splits = text_run_data(config)
    tokenizer = TextTokenizer(run / "tokenizer.json", int(config["text"]["max_tokens"]))
    fp32 = bundles / "onnx" / "model.onnx"
    pre, static = work / "static-int8-pre.onnx", work / "static-int8.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # the symbolic pass stops at Min(512, tokens)
    rows = np.sort(np.random.default_rng(0).permutation(splits.train)[: args.calibration])

    def feed(text: str) -> dict[str, np.ndarray]:
        ids, mask = tokenizer([text])
        return {"input_ids": ids, "attention_mask": mask}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            r = next(self.it, None)
            return None if r is None else feed(dataset.texts[int(r)])

        def rewind(self) -> None:
            self.it = iter(rows)

    t = time.perf_counter()
    quantize_static(
        str(pre),
        str(static),
        Reader(),
        quant_format=QuantFormat.QDQ,
        calibrate_method=CalibrationMethod.MinMax,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    print(f"static int8: calibrated on {len(rows)} training texts in {time.perf_counter() - t:.0f} s")
    options = ort.SessionOptions()
    paths = {"fp32": fp32, "dynamic (onnx-int8)": bundles / "onnx-int8" / "model.onnx", "static QDQ": static}
    sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    test, y = splits.test, dataset.targets[splits.test]
    print(f"\n{'model':22s} {'size':>9s} {'accuracy':>9s}")
    for k, s in sessions.items():
        hits = [int(s.run(None, feed(dataset.texts[int(r)]))[0].argmax()) == t for r, t in zip(test, y)]
        print(f"{k:22s} {paths[k].stat().st_size / 1e6:7.1f}MB {100 * np.mean(hits):8.2f}%  ({len(test)} test texts, one per call)")
    print(f"\n{'tokens':>6s} {'model':22s} {'p50':>9s} {'vs fp32':>8s}")
    for tokens in (32, 256):
        ids = np.full((1, tokens), 2023, np.int64)
        ids[0, 0], ids[0, -1] = 101, 102
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for s in sessions.values():
            for _ in range(5):
                s.run(None, inputs)
        for _ in range(args.rounds):
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, inputs)
                times[k].append(time.perf_counter() - t)
        base = float(np.median(times["fp32"]))
        for k in sessions:
            p50 = float(np.median(times[k]))
            print(f"{tokens:6d} {k:22s} {1000 * p50:7.2f}ms {base / p50:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
