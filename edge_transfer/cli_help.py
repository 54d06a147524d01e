"""Help texts of the `edge-transfer` command line that are longer than a flag's."""

from runtimes.preprocess import RESIZES

EPILOG = """examples:
  edge-transfer demo
  edge-transfer train --data digits --strategy linear-probe --out runs/digits
  edge-transfer train --data my_photos/ --strategy finetune --epochs 5 --image-size 160 --out runs/photos
  edge-transfer train --data my_photos/ --strategy finetune --epochs 5 --image-size 160 --out runs/photos --resume
  torchrun --nproc_per_node 4 -m edge_transfer train --data my_photos/ --strategy finetune --out runs/photos
  edge-transfer export runs/digits --format onnx --out bundles/digits
  edge-transfer export runs/digits --format onnx-int8,openvino-int8 --out bundles/digits-int8
  edge-transfer qat runs/photos --epochs 3
  edge-transfer export runs/photos/qat --format onnx-int8,openvino-int8,tensorrt-int8 --out bundles/photos-qat
  edge-transfer export --backbone efficientnet_lite0 --strategy pretrained --format onnx --out bundles/imagenet
  edge-transfer predict bundles/imagenet cat.jpg --top-k 3
  edge-transfer probe-layers --data my_photos/
  edge-transfer train --data my_photos/ --features blocks.4 --out runs/photos-b4
  edge-transfer export --backbone efficientnet_lite0 --output embedding --data held_out/ --format onnx --out bundles/emb
  edge-transfer enroll bundles/emb --gallery objects.npz --from-folders reference/
  edge-transfer identify bundles/emb --gallery objects.npz camera/ --json
  edge-transfer export runs/digits --output extensible --out bundles/digits-x
  edge-transfer imprint bundles/digits-x --classes added.npz --label nine shots/nine/
  edge-transfer predict bundles/digits-x --classes added.npz camera/
  edge-transfer inspect bundles/digits --json
  edge-transfer check bundles/digits --inference-precision bf16
  edge-transfer bench bundles/digits-all/onnx bundles/digits-all/onnx-int8 --batch 1,8
"""

FORMATS_HELP = """formats:
  onnx                ONNX fp32 (ONNX Runtime)
  onnx-fp16           ONNX with fp16 weights and compute; uint8 in, fp32 logits out
  onnx-int8           ONNX static int8: QDQ, per-channel weights, calibrated on the training split, stem layers in float
  onnx-int8-dynamic   ONNX dynamic int8 (weights only calibrated offline), for comparison
  openvino            OpenVINO IR fp32
  openvino-fp16       OpenVINO IR with fp16 weights
  openvino-int8       OpenVINO IR int8 through NNCF post-training quantisation (full bias correction, first 3 layers in float)
  tensorrt            TensorRT-ready ONNX; the fp32 engine is built on the device (edge-transfer build-engine)
  tensorrt-fp16       TensorRT-ready fp16 ONNX; fp16 engine built on the device
  tensorrt-int8       TensorRT-ready QDQ ONNX (symmetric int8, shared calibration); int8 engine built on the device

The int8 formats of a quantisation-aware run (edge-transfer qat) take its QDQ graph with the learned scales as it is:
no calibration, every Conv/Gemm in int8, judged against the fp32 parent run.

example:
  edge-transfer export runs/digits --format onnx,onnx-int8,openvino,openvino-int8 --out bundles/digits
"""

RESIZE_HELP = (
    "how images are resized, in training and on the device (the bundle records it): "
    + "; ".join(f"{name}: {what}" for name, what in RESIZES.items())
    + ". Default pillow"
)
