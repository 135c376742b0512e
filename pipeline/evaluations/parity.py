"""Engine parity: the exported ONNX model in ONNX Runtime and OpenCV's DNN module against PyTorch (the trained
state_dict, BatchNorm unfolded), on the same images: accuracy, top-1 agreement and the largest logit
difference for every pair, and the int8 bundle's predictions against each engine when they are given.
"""
import json
from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_text
from pipeline.model.evaluation import balanced_subset, load_model, onnxruntime_logits, require_onnx, torch_logits
from pipeline.model.shapes import to_input

OPENCV_PIN = "opencv-python-headless==4.13.0.92"


def opencv_logits(onnx_path, images) -> np.ndarray:
    import cv2

    net = cv2.dnn.readNetFromONNX(str(require_onnx(onnx_path)))
    x, out = to_input(images), []
    for i in range(len(x)):
        net.setInput(x[i:i + 1])
        out.append(np.array(net.forward(), dtype=np.float32).reshape(1, -1))
    return np.concatenate(out)


def opencv_skip_reason() -> str | None:
    """Why OpenCV cannot run here, or None when it can."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return f"skipped: OpenCV is not installed (pip install {OPENCV_PIN})"
    return None


def engine_logits(pth_path, channels, onnx_path, images) -> tuple[dict, dict]:
    """Logits per engine that can run, and the reason for each engine that cannot."""
    logits = {"pytorch": torch_logits(load_model(pth_path, channels), images),
              "onnxruntime": onnxruntime_logits(onnx_path, images)}
    skipped = {}
    reason = opencv_skip_reason()
    if reason:
        skipped["opencv"] = reason
    else:
        logits["opencv"] = opencv_logits(onnx_path, images)
    return logits, skipped


def compare_engines(logits: dict, labels, int8_predictions=None, skipped=None) -> dict:
    """Accuracy per engine; top-1 agreement, disagreement count and max |logit difference| per pair; and the
    int8 predictions' accuracy and agreement with each engine, if given (same images, same order)."""
    labels = np.asarray(labels)
    top1 = {name: np.asarray(v).argmax(axis=1) for name, v in logits.items()}
    result = {
        "images": int(len(labels)),
        "engines": {name: {"accuracy": float((p == labels).mean())} for name, p in top1.items()},
        "skipped": dict(skipped or {}),
        "pairs": [{"engines": [a, b], "top1_agreement": float((top1[a] == top1[b]).mean()),
                   "disagreements": int((top1[a] != top1[b]).sum()),
                   "max_abs_diff": float(np.abs(np.asarray(logits[a]) - np.asarray(logits[b])).max())}
                  for a, b in combinations(logits, 2)],
    }
    if int8_predictions is None:
        result["int8"] = None
    else:
        int8_predictions = np.asarray(int8_predictions)
        if int8_predictions.shape != labels.shape:
            raise ValueError(f"int8 predictions have shape {int8_predictions.shape} but there are "
                             f"{len(labels)} images; predict the same images in the same order")
        result["int8"] = {"accuracy": float((int8_predictions == labels).mean()),
                          "top1_agreement": {name: float((int8_predictions == p).mean()) for name, p in top1.items()}}
    return result


def markdown_table(result: dict) -> str:
    lines = [f"Engine parity over {result['images']} images.", "",
             "| engine | accuracy |", "| --- | ---: |"]
    lines += [f"| {name} | {e['accuracy']:.2%} |" for name, e in result["engines"].items()]
    if result["int8"]:
        lines.append(f"| int8 bundle | {result['int8']['accuracy']:.2%} |")
    lines += ["", "| engines | top-1 agreement | disagreements | max abs logit difference |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {' vs '.join(p['engines'])} | {p['top1_agreement']:.2%} | {p['disagreements']} | "
              f"{p['max_abs_diff']:.3g} |" for p in result["pairs"]]
    if result["int8"]:
        lines += [f"| int8 bundle vs {name} | {agreement:.2%} | | |"
                  for name, agreement in result["int8"]["top1_agreement"].items()]
    lines += [f"\n{name}: {reason}" for name, reason in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def run_stage(pth_path, channels, onnx_path, data_dir, out_dir, max_images: int = 0, split: str = "val",
              int8_predictions_path=None) -> dict:
    """The doit stage: parity.json and parity.md in out_dir. int8 predictions, if given, are an .npy of class
    indices for the same `max_images` balanced subset of the split."""
    from pipeline.model.dataset import load_split

    images, labels = load_split(data_dir, split)
    keep = balanced_subset(labels, max_images)
    logits, skipped = engine_logits(pth_path, channels, onnx_path, images[keep])
    int8_predictions = None if int8_predictions_path is None else np.load(int8_predictions_path)
    result = compare_engines(logits, labels[keep], int8_predictions, skipped)
    out_dir = Path(out_dir)
    write_text(out_dir / "parity.json", json.dumps(result, indent=2) + "\n")
    write_text(out_dir / "parity.md", markdown_table(result))
    return result
