"""What code without torch needs to know about the network: its input shape, its preprocessing and its
multiply-accumulate count (the model itself is pipeline/model.py)."""
import numpy as np

INPUT_SHAPE = (1, 3, 32, 32)


def count_macs(channels=(32, 32, 64, 128), num_classes: int = 10) -> int:
    """Multiply-accumulates of one inference (conv and linear layers), for per-MAC figures."""
    side, macs, widths = INPUT_SHAPE[2], 0, [INPUT_SHAPE[1], *channels]
    for i in range(len(channels)):
        macs += side * side * widths[i + 1] * widths[i] * 9
        if i > 0:
            side //= 2
    return macs + channels[-1] * side * side * num_classes


def to_input(images) -> np.ndarray:
    """uint8 NHWC RGB images -> float32 NCHW in [-1, 1]: the note's Normalize(0.5, 0.5) and Glow's neg1to1."""
    x = np.asarray(images, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
