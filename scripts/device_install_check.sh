#!/usr/bin/env bash
# `make device-test` (CI runs it after the suite): the README's device install, as written, in a fresh venv where torch
# is not installed at all, from the wheels `make wheels` built. Then the device commands and examples run there on
# bundles the host made (a signed classifier and an embedding bundle), and the wheel's and the venv's sizes are printed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOST="$ROOT/.venv/bin"
VERSION="$("$HOST/python" -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/edge-transfer-device-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "host: wheels, a signed classifier bundle and an embedding bundle"
cd "$ROOT"
make wheels
"$HOST/python" - "$WORK/digits" <<'EOF'
import sys
from pathlib import Path
from PIL import Image
from sklearn.datasets import load_digits
d = load_digits()
for i, (img, y) in enumerate(zip(d.images[:600], d.target[:600])):
    split = "val" if i % 5 == 0 else "train"
    folder = Path(sys.argv[1]) / split / str(y)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((255 - img * 255 / 16).astype("uint8")).resize((32, 32)).save(folder / f"{i}.png")
EOF
"$HOST/edge-transfer" keygen "$WORK/keys/release.key"
"$HOST/edge-transfer" train --data "$WORK/digits/train" --image-size 64 --out "$WORK/run" --quiet
"$HOST/edge-transfer" export "$WORK/run" --format onnx --out "$WORK/bundle" --sign-key "$WORK/keys/release.key" --quiet
"$HOST/edge-transfer" export "$WORK/run" --output embedding --format onnx --out "$WORK/emb" --quiet

step "copy to the device: the runtime wheel, the bundles, the public key"
DEVICE="$WORK/device"
mkdir -p "$DEVICE"
cp "dist/edge_transfer_runtime-$VERSION-py3-none-any.whl" "$DEVICE/"
cp -r "$WORK/bundle" "$DEVICE/photos-onnx"
cp -r "$WORK/emb" "$DEVICE/emb"
cp -r "$WORK/digits/val" "$DEVICE/val"
cp "$WORK/keys/release.pub" "$DEVICE/"
cp -r "$ROOT/examples" "$DEVICE/examples"
cd "$DEVICE"

step "the README's device commands, as written"
python3 -m venv et
et/bin/pip install "edge_transfer_runtime-$VERSION-py3-none-any.whl[onnxruntime]"
et/bin/edge-transfer check photos-onnx

step "torch is absent here, not blocked"
if et/bin/python -c "import torch" 2>/dev/null; then echo "torch is installed in the device venv" >&2; exit 1; fi
et/bin/python -c "import importlib.util as u; missing = [m for m in ('torch', 'edge_transfer', 'converters', 'onnx', 'timm') if u.find_spec(m) is None]; print('not installed:', ', '.join(missing)); assert len(missing) == 5"

step "device commands"
image="$(ls val/3/*.png | head -1)"
et/bin/edge-transfer predict photos-onnx "$image" --top-k 2
et/bin/edge-transfer val photos-onnx --data val
EDGE_TRANSFER_TRUSTED_KEYS=release.pub et/bin/edge-transfer check photos-onnx | grep "signed by trusted key"
et/bin/edge-transfer enroll emb --gallery gallery.npz --from-folders val
et/bin/edge-transfer identify emb --gallery gallery.npz "$image"
et/bin/edge-transfer deploy photos-onnx --to models --key release.pub
said="$(et/bin/edge-transfer train --data val --out run 2>&1 || true)"
grep "host command" <<<"$said" || { echo "train did not name the host install: $said" >&2; exit 1; }

step "examples"
et/bin/python examples/classify_image.py photos-onnx "$image"
et/bin/python examples/enroll_and_identify.py emb --enrol val --gallery g2.npz "$image"
mkdir incoming && cp val/7/*.png incoming/
et/bin/python examples/watch_folder.py models --folder incoming --idle-exit 1 --every 50 | tail -2

step "sizes"
wheel_kb=$(( $(stat -c %s "edge_transfer_runtime-$VERSION-py3-none-any.whl") / 1024 ))
echo "runtime wheel: ${wheel_kb} KB; device venv with [onnxruntime]: $(du -sh et | cut -f1) ($(et/bin/pip list 2>/dev/null | tail -n +3 | wc -l) packages)"
