"""Is requantization rounding the whole difference between TFLite Micro and the bundle? Runs a built tree's
`.tflite` in TFLM and in LiteRT's reference kernels on its test split, and our NumPy int8 reference with Glow's
rounding and with TensorFlow Lite's (pipeline/evaluations/tflite_parity.py), and prints how many images each
pair disagrees on (any output element).

  python benchmarks/tflite_rounding.py --build build
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from pipeline.evaluations import tflite_parity  # noqa: E402
from pipeline.int8 import graph as int8_graph, ops  # noqa: E402
from pipeline.int8.tflite import load_quantized  # noqa: E402
from pipeline.model.dataset import load_split  # noqa: E402
from pipeline.model.shapes import to_input  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=REPO / "build")
    parser.add_argument("--name", default="cifar")
    args = parser.parse_args()
    model = args.build / "model"
    qm = load_quantized(model / f"{args.name}.onnx", args.build / "quant" / "profile_tuned.yml")
    data = (model / f"{args.name}_int8.tflite").read_bytes()
    x = to_input(load_split(args.build / "data", "test")[0])
    inputs = tflite_parity.model_inputs(data, x)
    outputs = {"tflm": tflite_parity.tflm_outputs(data, inputs, tflite_parity.tflm_arena_size(data, inputs[:1])),
               "litert_reference_kernels": tflite_parity.litert_outputs(data, inputs, reference_kernels=True),
               "numpy_int8 (Glow rounding)": int8_graph.run_int8(qm, x)}
    glow_rounding = ops.requantize  # what the conv and fc references call
    ops.requantize = tflite_parity.tflite_requantize  # the same graph, TensorFlow Lite's rounding
    try:
        outputs["numpy_int8 (TFLite rounding)"] = int8_graph.run_int8(qm, x)
    finally:
        ops.requantize = glow_rounding
    names = list(outputs)
    print(f"{len(x)} test images; images whose outputs differ in any element:")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            print(f"  {a} vs {b}: {int((np.abs(outputs[a] - outputs[b]).max(axis=1) > 0).sum())}")


if __name__ == "__main__":
    main()
