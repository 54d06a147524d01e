"""atheris (libFuzzer) harness for the untrusted-input entry points of runtimes: the manifest parser (JSON
documents) and the ONNX external-data walker (raw model bytes). Only our typed errors may escape.

    python tests/fuzz/fuzz_bundle.py CORPUS_DIR -runs=100000      # a long run
CI smoke-runs it for a bounded number of iterations (tests/test_hardening.py).
"""

import json
import sys

import atheris

with atheris.instrument_imports():
    from runtimes.errors import EdgeTransferError
    from runtimes.manifest import parse_manifest
    from runtimes.onnx_refs import _walk


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, payload = data[0] % 2, data[1:]
    if target == 0:
        try:
            doc = json.loads(payload.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return  # not JSON: json's concern, not ours
        try:
            parse_manifest(doc)
        except EdgeTransferError:
            pass
    else:
        try:
            _walk(memoryview(payload), "model", 0, [])
        except EdgeTransferError:
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
