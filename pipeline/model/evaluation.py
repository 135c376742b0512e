"""Host-side evaluation helpers: the trained float model (state_dict) on uint8 NHWC images, softmax, and
class-balanced subsets for stages that look at only part of a split."""
from pathlib import Path

import numpy as np

from pipeline.model.shapes import to_input


class ModelFileError(ValueError):
    """A .pth that cannot be used, with how to fix it."""


def read_state(path) -> dict:
    """A .pth state_dict, or a clear error for a file that is not one."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelFileError(f"{path}: not a readable PyTorch state_dict ({err}); give a .pth saved by this "
                             f"pipeline (torch.save(model.state_dict()))") from None


def load_state(model, path, state: dict | None = None) -> None:
    """Load a .pth state_dict into `model`, refusing one made for another network shape."""
    state = read_state(path) if state is None else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[:3]
        raise ModelFileError(f"{path}: does not match the network (model.channels / classes): "
                             f"{' '.join(first)}; use a .pth trained with the same model.channels") from None


def load_model(pth_path, channels=(32, 32, 64, 128), network: str = "cifarnet"):
    """The network (CifarNet unless named) in eval mode with the weights of `pth_path` (a state_dict, as training
    saves it), with as many classes as its classifier has; a missing, unreadable or mismatched file is a clear
    error."""
    from pipeline.model.network import NETWORKS

    pth_path = Path(pth_path)
    if not pth_path.is_file():
        raise FileNotFoundError(f"model weights {pth_path} do not exist; run the training task first (doit train)")
    state = read_state(pth_path)
    classifier = state.get("classifier.weight") if isinstance(state, dict) else None
    model = NETWORKS[network](channels=tuple(channels), num_classes=10 if classifier is None else classifier.shape[0])
    load_state(model, pth_path, state)
    return model.eval()


def torch_logits(model, images, batch_size: int = 256) -> np.ndarray:
    """Float32 logits (N, classes) of uint8 NHWC images, from a torch module."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(to_input(images[start:start + batch_size]))).numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def softmax(logits) -> np.ndarray:
    """Row softmax in float32, as the firmware computes it before hardening."""
    z = np.asarray(logits, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def balanced_subset(labels, count: int) -> np.ndarray:
    """Indices of `count` items taken round-robin over the classes, in order within each class (0 = all).

    Splits are stored class by class, so the first N items would all be airplanes."""
    labels = np.asarray(labels)
    if not count or count >= len(labels):
        return np.arange(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))
    return np.sort(order[:count])


def require_onnx(onnx_path) -> Path:
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model {onnx_path} does not exist; run the export task first (doit export)")
    return onnx_path


def onnxruntime_logits(onnx_path, images) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(require_onnx(onnx_path)), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = to_input(images)
    # The export has a fixed batch of 1, as the bundle does: one image per run.
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float32)
