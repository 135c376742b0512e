"""Small learnable synthetic data and a CifarNet trained on it for a few steps, so tests never need CIFAR-10.

Class k is a bright square at a fixed place on a noisy background with a random tint: easy enough that a
narrow CifarNet reaches high accuracy in a few dozen steps, varied enough that attacks and transforms bite."""
import numpy as np
import torch

from pipeline.model.network import CifarNet
from pipeline.model.shapes import to_input

TINY_CHANNELS = (8, 8, 16, 16)


def synthetic_images(count: int, seed: int = 0, classes: int = 10):
    """uint8 NHWC images (count, 32, 32, 3) and int64 labels, classes interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % classes
    images = rng.normal(80, 25, size=(count, 32, 32, 3)) * rng.uniform(0.6, 1.2, size=(count, 1, 1, 3))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 3 + 9 * row:10 + 9 * row, 2 + 8 * col:8 + 8 * col] += 30
    return np.clip(images, 0, 255).astype(np.uint8), labels


def train_tiny_model(images, labels, steps: int = 80, seed: int = 0, channels=TINY_CHANNELS) -> CifarNet:
    torch.manual_seed(seed)
    model = CifarNet(channels=channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(to_input(images)), torch.from_numpy(labels)
    order = np.random.default_rng(seed)
    for _ in range(steps):
        batch = torch.from_numpy(order.choice(len(labels), 64, replace=False))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def export_onnx(model: CifarNet, path) -> None:
    """As the export stage does: batch 1, input 'input', output 'output', opset 13, legacy exporter."""
    torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), input_names=["input"], output_names=["output"],
                      opset_version=13, dynamo=False)
