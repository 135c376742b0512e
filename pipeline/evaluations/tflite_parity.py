"""TensorFlow Lite parity: the int8 .tflite (pipeline/int8/tflite.py) run by LiteRT (its default XNNPACK path
and its reference kernels) and by TensorFlow Lite Micro's host interpreter, against our NumPy int8 reference
and the host-compiled bundle, on the test split; TFLM's own checks (the ops it resolves, the arena it needs).

Where the engines differ, the stage says why: every layer's accumulator (from the reference's own int8 input)
is requantized both ways, Glow's single rounding shift (round half up) and TensorFlow Lite's reference
requantization (a rounding doubling high multiply by 2**30, then a rounding right shift, each rounding half away
from zero: two roundings), and the elements where the two give different int8 values are counted.
"""
import contextlib
import json
import os
from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_text
from pipeline.evaluations.parity import compare_engines
from pipeline.int8 import bundle
from pipeline.int8 import graph as int8_graph
from pipeline.int8.quantize import host_bundle
from pipeline.int8.tflite import load_quantized
from pipeline.model.dataset import load_split
from pipeline.model.evaluation import balanced_subset
from pipeline.model.shapes import to_input

LITERT_PIN, TFLM_PIN = "ai-edge-litert==2.3.0", "tflite-micro==0.dev20261023182759"
REFERENCE = "numpy_int8"


def skip_reasons() -> dict:
    """{engine: why it cannot run here} for the TensorFlow Lite runtimes that are not installed."""
    reasons = {}
    for engines, module, pin in ((("litert", "litert_reference_kernels"), "ai_edge_litert.interpreter", LITERT_PIN),
                                 (("tflm",), "tflite_micro.python.tflite_micro.runtime", TFLM_PIN)):
        try:
            __import__(module)
        except ImportError as err:
            reasons.update({engine: f"skipped: {module} cannot be imported ({err}); pip install {pin}"
                            for engine in engines})
    return reasons


def model_inputs(tflite_bytes: bytes, x_nchw: np.ndarray) -> np.ndarray:
    """Float NCHW inputs as the .tflite takes them: NHWC, and quantized when its input is int8."""
    from pipeline.int8.tflite import schema

    model = schema().Model.GetRootAs(tflite_bytes, 0)
    subgraph = model.Subgraphs(0)
    tensor = subgraph.Tensors(subgraph.Inputs(0))
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1), np.float32)
    if tensor.Type() == schema().TensorType.INT8:
        exponent = int(np.log2(tensor.Quantization().Scale(0)))
        return int8_graph.quantize_array(x, exponent)
    return x


def dequantized(output: np.ndarray, details: dict) -> np.ndarray:
    scales = details["quantization_parameters"]["scales"]
    return output.astype(np.float32) * scales[0] if output.dtype == np.int8 else output


def litert_outputs(tflite_bytes: bytes, inputs: np.ndarray, reference_kernels: bool = False) -> np.ndarray:
    """LiteRT's outputs for a batch (the model's batch dimension resized to it): its default kernels (XNNPACK)
    or, with reference_kernels, TensorFlow Lite's reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = Interpreter(model_content=tflite_bytes, experimental_op_resolver_type=resolver, num_threads=1)
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(source["index"], inputs.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], inputs)
    interpreter.invoke()
    return dequantized(interpreter.get_tensor(sink["index"]), sink).reshape(len(inputs), -1)


def tflm_interpreter(tflite_bytes: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(tflite_bytes, arena_size=arena_size)


def tflm_outputs(tflite_bytes: bytes, inputs: np.ndarray, arena_size: int) -> np.ndarray:
    """TFLM's outputs, one image at a time (a microcontroller's batch of one)."""
    interpreter = tflm_interpreter(tflite_bytes, arena_size)
    details, outputs = interpreter.get_output_details(0), []
    for image in inputs:
        interpreter.set_input(image[None], 0)
        interpreter.invoke()
        outputs.append(dequantized(interpreter.get_output(0), details).reshape(-1))
    return np.stack(outputs)


@contextlib.contextmanager
def quiet_stderr():
    """TFLM prints every failed allocation to the process's stderr; the arena search expects them."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def tflm_arena_size(tflite_bytes: bytes, sample: np.ndarray) -> int:
    """The smallest tensor arena (bytes) with which TFLM allocates the model and runs an inference: a
    bisection on TFLM's own allocator, which fails with a RuntimeError when the arena is too small."""
    def fits(size: int) -> bool:
        try:
            interpreter = tflm_interpreter(tflite_bytes, size)
            interpreter.set_input(sample, 0)
            interpreter.invoke()
        except RuntimeError:
            return False
        return True

    low, high = 0, 16 * len(tflite_bytes)
    with quiet_stderr():
        if not fits(high):
            raise RuntimeError(f"TFLM cannot allocate the model even in a {high}-byte arena")
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def tflm_checks(tflite_bytes: bytes, sample: np.ndarray) -> dict:
    """What TFLM says about the model: the ops its resolver found (construction fails on any it lacks) and the
    arena it needs."""
    from pipeline.int8.tflite import schema

    fb = schema()
    names = {value: name for name, value in vars(fb.BuiltinOperator).items() if not name.startswith("_")}
    model = fb.Model.GetRootAs(tflite_bytes, 0)
    ops = [names[model.OperatorCodes(i).BuiltinCode()] for i in range(model.OperatorCodesLength())]
    return {"ops_resolved": ops, "arena_bytes": tflm_arena_size(tflite_bytes, sample)}


def tflite_requantize(acc: np.ndarray, shift: int, act_min: int) -> np.ndarray:
    """TensorFlow Lite's reference MultiplyByQuantizedMultiplier for the real multiplier 2**-shift (quantized
    as 2**30 with a right shift of shift - 1), then the activation clamp."""
    acc = acc.astype(np.int64)
    if shift <= 0:
        return np.clip(acc << -shift, act_min, int8_graph.INT8_MAX).astype(np.int8)
    product = acc << 30
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.fix((product + nudge) / 2.0**31).astype(np.int64)  # C's division truncates toward zero
    exponent = shift - 1
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    rounded = (high >> exponent) + ((high & mask) > threshold)
    return np.clip(rounded, act_min, int8_graph.INT8_MAX).astype(np.int8)


def rounding_differences(qm: int8_graph.QuantModel, x_nchw: np.ndarray) -> list[dict]:
    """Per conv / fc layer, on the reference's own int8 input to it: how many output elements Glow's and
    TensorFlow Lite's requantization round to different int8 values (in batches: accumulators are int64)."""
    layers = {op.node: {"node": op.node, "shift": op.shift, "elements": 0, "differ": 0, "max_difference": 0}
              for op in qm.ops if op.kind in ("conv", "fc")}
    for start in range(0, len(x_nchw), int8_graph.BATCH):
        tensors = int8_graph.run_int8(qm, x_nchw[start:start + int8_graph.BATCH], keep_all=True)
        for op in qm.ops:
            if op.node not in layers:
                continue
            src = tensors[op.inputs[0]]
            cols = int8_graph.im2col(src, op.kernel, op.stride, op.pads, 0) if op.kind == "conv" else src
            acc = cols.astype(np.int64) @ op.weight.T.astype(np.int64) + op.bias
            difference = np.abs(int8_graph.requantize(acc, op.shift, op.act_min).astype(np.int16)
                                - tflite_requantize(acc, op.shift, op.act_min))
            layer = layers[op.node]
            layer["elements"] += int(difference.size)
            layer["differ"] += int(np.count_nonzero(difference))
            layer["max_difference"] = max(layer["max_difference"], int(difference.max(initial=0)))
    return list(layers.values())


def against_reference(outputs: dict, lsb: float) -> dict:
    """Each engine's outputs against the NumPy int8 reference: top-1 agreement, images whose outputs differ at
    all, and the largest difference (also in output LSBs)."""
    reference = outputs[REFERENCE]
    result = {}
    for name, values in outputs.items():
        if name == REFERENCE:
            continue
        difference = np.abs(values - reference)
        result[name] = {"top1_agreement": float((values.argmax(1) == reference.argmax(1)).mean()),
                        "images_differing": int((difference.max(axis=1) > 0).sum()),
                        "max_abs_diff": float(difference.max()),
                        "max_diff_lsb": float(difference.max() / lsb)}
    return result


def compare(onnx_path, profile_path, tflite_path, images, labels, network: str) -> dict:
    """Every engine's outputs on the same images, compared; TFLM's checks; the rounding analysis."""
    qm = load_quantized(onnx_path, profile_path)
    tflite_bytes = Path(tflite_path).read_bytes()
    x = to_input(images)
    outputs = {REFERENCE: int8_graph.run_int8(qm, x)}
    with host_bundle(onnx_path, profile_path, network) as (sources, work):
        outputs["host_bundle"] = bundle.host_outputs(sources, x, work, network)
    skipped = skip_reasons()
    inputs = model_inputs(tflite_bytes, x)
    if "litert" not in skipped:
        outputs["litert"] = litert_outputs(tflite_bytes, inputs)
        outputs["litert_reference_kernels"] = litert_outputs(tflite_bytes, inputs, reference_kernels=True)
    plan = bundle.plan_memory(qm)
    memory = {"bundle_activations_bytes": plan.activations_size, "bundle_mutable_bytes": plan.mutable_size}
    if "tflm" not in skipped:
        memory["tflm"] = tflm_checks(tflite_bytes, inputs[:1])
        outputs["tflm"] = tflm_outputs(tflite_bytes, inputs, memory["tflm"]["arena_bytes"])
    lsb = 2.0 ** next(op.out_exp for op in qm.ops if op.kind == "dequantize")
    result = compare_engines(outputs, labels, skipped=skipped)
    del result["int8"]
    result.update({"split": "test", "reference": REFERENCE, "output_lsb": lsb,
                   "against_reference": against_reference(outputs, lsb), "memory": memory,
                   "rounding": rounding_differences(qm, x)})
    return result


def markdown(result: dict) -> str:
    """The table and the sentence the report shows."""
    lines = [f"TensorFlow Lite parity on {result['images']} test images, against the NumPy int8 reference "
             f"(bit-exact with the bundle's C). One output LSB is {result['output_lsb']:g}.", "",
             "| engine | accuracy | top-1 agreement | images differing | max abs difference |",
             "| --- | ---: | ---: | ---: | ---: |",
             f"| {REFERENCE} | {result['engines'][REFERENCE]['accuracy']:.2%} | | | |"]
    lines += [f"| {name} | {result['engines'][name]['accuracy']:.2%} | {c['top1_agreement']:.2%} | "
              f"{c['images_differing']} | {c['max_abs_diff']:.4g} ({c['max_diff_lsb']:g} LSB) |"
              for name, c in result["against_reference"].items()]
    rounding = result["rounding"]
    changed = sum(layer["differ"] for layer in rounding)
    total = sum(layer["elements"] for layer in rounding)
    lines += ["", f"Why they differ: the scales, weights and biases are identical; on the same accumulators, "
                  f"TensorFlow Lite's requantization (two roundings, half away from zero) and Glow's (one rounding "
                  f"shift, half up) give different int8 values for {changed} of {total:,} conv/fc outputs "
                  f"({changed / max(total, 1):.3%}), by at most "
                  f"{max((layer['max_difference'] for layer in rounding), default=0)} LSB, and those differences "
                  f"propagate to the logits.", ""]
    memory = result["memory"]
    if "tflm" in memory:
        lines += [f"TFLite Micro resolves {', '.join(memory['tflm']['ops_resolved'])} and needs a "
                  f"{memory['tflm']['arena_bytes']:,}-byte tensor arena; the bundle needs "
                  f"{memory['bundle_activations_bytes']:,} bytes of activations plus "
                  f"{memory['bundle_mutable_bytes']:,} bytes of input/output placeholders."]
    lines += [f"{name}: {reason}" for name, reason in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def run_stage(onnx_path, profile_path, tflite_path, data_dir, out_dir, network: str, max_images: int = 0) -> dict:
    """The doit stage: tflite_parity.json and tflite_parity.md in out_dir, on a class-balanced subset of the
    test split (`max_images`, 0 = all)."""
    images, labels = load_split(data_dir, "test")
    keep = balanced_subset(labels, max_images)
    result = compare(onnx_path, profile_path, tflite_path, images[keep], labels[keep], network)
    out_dir = Path(out_dir)
    write_text(out_dir / "tflite_parity.json", json.dumps(result, indent=2) + "\n")
    write_text(out_dir / "tflite_parity.md", markdown(result))
    return result
