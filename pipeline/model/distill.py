"""Knowledge distillation's teacher: a wider network (never deployed) trained once as its own cached step, and
its soft targets, which the student's training reads instead of running the teacher at every step: per training
image, the mean of the teacher's logits for the image and its mirror image (two views: an ensemble's estimate,
the same for every augmented view of the image; the student's crops move it by at most crop_padding pixels)."""
import io
from pathlib import Path

import numpy as np

from pipeline.core import atomic
from pipeline.model import numerics, train
from pipeline.model.dataset import load_split
from pipeline.model.evaluation import load_model
from pipeline.model.shapes import to_input


def teacher_logits(model, images, precision: str, batch_size: int = 500) -> np.ndarray:
    """(N, classes) float32: the mean of the logits of uint8 NHWC images and of their mirror images."""
    import torch

    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(to_input(images[start:start + batch_size]))
            out.append(((model(x).float() + model(x.flip(3)).float()) / 2).numpy())
    return np.concatenate(out)


def teacher(data_dir, teacher_dir, *, channels, precision, threads, progress=True, **recipe) -> dict:
    """Train the teacher (pipeline.model.train with network "teacher") into teacher_dir, then write its soft
    targets for the training split."""
    teacher_dir = Path(teacher_dir)
    metrics = train.train(data_dir, teacher_dir / "teacher.pth", channels=channels, precision=precision,
                          threads=threads, network="teacher", progress=progress, **recipe)
    model = load_model(teacher_dir / "teacher.pth", channels, network="teacher")
    train_x, _ = load_split(data_dir, "train")
    logits = teacher_logits(model, train_x, numerics.precision_used(precision))
    buffer = io.BytesIO()
    np.save(buffer, logits)
    atomic.write_bytes(teacher_dir / "soft_targets.npy", buffer.getvalue())
    return metrics
