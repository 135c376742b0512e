"""Training stage: a network on the canonical dataset -> <name>.pth (state_dict), metrics.json, training.png.

Deterministic: fixed thread count, deterministic algorithms, and every epoch's shuffling and augmentation
drawn from a generator seeded by (seed, epoch). A checkpoint after each epoch therefore lets an interrupted
run resume and end bit-identical to an uninterrupted one. With `distillation` > 0 the loss mixes the labels
with a teacher's soft targets (pipeline.model.distill writes them).
"""
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.deterministic
from torch import nn
from tqdm import tqdm

from pipeline.core import atomic
from pipeline.model.dataset import load_classes, load_split
from pipeline.model.evaluation import load_state, torch_logits
from pipeline.model import numerics
from pipeline.model.network import NETWORKS
from pipeline.model.shapes import to_input

EVAL_BATCH = 500


PHASE_PREFIX = "train: "


def phase(name: str):
    """Labels a part of the training loop for torch.profiler (benchmarks/training_speed.py sums them)."""
    return torch.profiler.record_function(PHASE_PREFIX + name)


def setup_determinism(threads: int, seed: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN, a guard against kernels reading memory they did not
    # write; no kernel here does (the reproducibility test compares whole runs), and the fill took a sixth of
    # each bf16 step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.manual_seed(seed)


def augment_batch(x: torch.Tensor, gen: torch.Generator, crop_padding: int, flip=None) -> torch.Tensor:
    """Random crop after `crop_padding` pixels of reflection padding (0: no crop), and horizontal flip of the
    images `flip` marks (None: each at random)."""
    n = x.shape[0]
    if crop_padding:
        padded = nn.functional.pad(x, (crop_padding,) * 4, mode="reflect")
        dy, dx = torch.randint(0, 2 * crop_padding + 1, (2, n), generator=gen)
        rows = (dy[:, None] + torch.arange(32))[:, None, :, None].expand(n, 3, 32, padded.shape[3])
        cols = (dx[:, None] + torch.arange(32))[:, None, None, :].expand(n, 3, 32, 32)
        x = padded.gather(2, rows).gather(3, cols)
    if flip is None:
        flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def alternating_flips(count: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of `count` training images to mirror in `epoch` for flip = "alternating": drawn once per image, then
    inverted from epoch to epoch, so every image is seen both ways in any two epochs in a row (random flips show
    a quarter of the images the same way twice)."""
    first = torch.rand(count, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first ^ bool(epoch % 2)


@torch.no_grad()
def whiten_first_conv(model: nn.Module, inputs: torch.Tensor, eps: float = 5e-3, stride: int = 5) -> None:
    """Start the first convolution as a whitening filter bank of the input's k x k patches (every `stride`-th
    training image): each filter a leading eigenvector of the patches' covariance over sqrt(eigenvalue + eps),
    then the same filters negated (the ReLU after BatchNorm keeps one sign). Its responses to the patches are then
    uncorrelated, of variance eigenvalue / (eigenvalue + eps): one for the strong directions, eps damps the faint,
    noisy ones. The filters go on training like any weight; those beyond twice the patch size keep PyTorch's
    initialisation."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    size = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    products, sums, count = torch.zeros(size, size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64), 0
    for chunk in inputs[::stride].split(1000):
        patches = nn.functional.unfold(chunk.double(), conv.kernel_size).transpose(1, 2).reshape(-1, size)
        products += patches.T @ patches
        sums += patches.sum(0)
        count += len(patches)
    mean = sums / count
    values, vectors = torch.linalg.eigh(products / count - torch.outer(mean, mean))  # ascending eigenvalues
    pairs = min(conv.out_channels // 2, size)
    filters = (vectors[:, -pairs:] / (values[-pairs:] + eps).sqrt()).T.flip(0)  # largest eigenvalue first
    conv.weight[:2 * pairs] = torch.cat([filters, -filters]).reshape(2 * pairs, *conv.weight.shape[1:]).float()
    if conv.bias is not None:
        conv.bias[:2 * pairs] = 0.0


def evaluate(model: nn.Module, images, labels) -> float:
    """Top-1 accuracy of the float model on uint8 NHWC images."""
    model.eval()
    if not len(labels):
        return 0.0
    return float((torch_logits(model, images, EVAL_BATCH).argmax(1) == labels).mean())


def make_optimizer(model, optimizer: str, lr: float, weight_decay: float):
    """Weight decay on the conv and linear weights only: decaying BatchNorm scales and biases only slows them."""
    weights = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=weights, weight_decay=weight_decay), dict(params=others, weight_decay=0.0)]
    # foreach: one fused update of all tensors per step (PyTorch picks it by default on GPUs only)
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, foreach=True)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, foreach=True)


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics (`module`, what is saved). The
    decay ramps up as (1 + n) / (10 + n) over the first updates, so that a short run is not dominated by the
    initial weights. One fused update per step (torch._foreach_lerp_) rather than a loop over tensors."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.module, self.decay, self.updates = copy.deepcopy(model), decay, 0
        pairs = list(zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()]))
        self.averaged = [a for a, _ in pairs if a.is_floating_point()]
        self.current = [c for a, c in pairs if a.is_floating_point()]
        self.counters = [(a, c) for a, c in pairs if not a.is_floating_point()]  # BatchNorm's batch counts

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(self.averaged, self.current, 1.0 - decay)
        for averaged, current in self.counters:
            averaged.copy_(current)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


def make_schedule(opt, schedule: str, lr: float, epochs: int, steps_per_epoch: int):
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def distillation_loss(logits, labels, teacher_logits, *, weight: float, temperature: float, label_smoothing: float):
    """(1 - weight) x cross-entropy with the labels + weight x T^2 x KL(teacher || student) at temperature T
    (Hinton et al.: T^2 keeps the soft term's gradients at the hard term's scale)."""
    hard = nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if not weight:
        return hard
    soft = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, 1),
                                nn.functional.log_softmax(teacher_logits / temperature, 1),
                                reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * temperature ** 2 * soft


def recipe_digest(recipe: dict, data_manifest: Path) -> str:
    """Identifies what a checkpoint was made from, so a resume never mixes two different runs."""
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    h.update(Path(data_manifest).read_bytes())
    return h.hexdigest()


def save_state_dict(model: nn.Module, path) -> None:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic.write_bytes(path, buffer.getvalue())


def train(data_dir, pth, *, channels, optimizer, lr, batch_size, epochs, schedule, weight_decay, augment,
          crop_padding, flip, whitening_init, label_smoothing, ema_decay, precision, distillation,
          distillation_temperature, seed=0, threads=2, init_from="", preset="", network="cifarnet", soft_targets="",
          timed=False, test_each_epoch=False, progress=True) -> dict:
    """Train on data_dir's canonical dataset; write the deployed state_dict to `pth` and metrics.json,
    training.png and (while running) checkpoint.pt beside it. `soft_targets`: the teacher's logits per training
    image (.npy, pipeline.model.distill; needed when distillation > 0). For the training benchmarks: `timed` adds
    the wall-clock seconds so far to every epoch's record (the build's metrics.json leaves them out: it is
    byte-identical from run to run), `test_each_epoch` the test accuracy (nothing is chosen by it)."""
    data_dir, pth = Path(data_dir), Path(pth)
    out_dir = pth.parent
    used = numerics.precision_used(precision)
    numerics.warn_on_fallback(precision, used)
    if distillation and not soft_targets:
        raise ValueError("training.distillation > 0 needs the teacher's soft targets (soft_targets=...); "
                         "set training.distillation = 0 to train from the labels alone")
    recipe = dict(network=network, channels=list(channels), optimizer=optimizer, lr=lr, batch_size=batch_size,
                  epochs=epochs, schedule=schedule, weight_decay=weight_decay, augment=augment,
                  crop_padding=crop_padding, flip=flip, whitening_init=whitening_init,
                  label_smoothing=label_smoothing, ema_decay=ema_decay,
                  precision=precision, precision_used=used, distillation=distillation,
                  distillation_temperature=distillation_temperature, seed=seed, threads=threads,
                  init_from=str(init_from), preset=preset)
    setup_determinism(threads, seed)
    classes = load_classes(data_dir)
    train_x, train_y = load_split(data_dir, "train")
    val_x, val_y = load_split(data_dir, "val")
    inputs, targets = torch.from_numpy(to_input(train_x)), torch.from_numpy(train_y)
    teacher_logits = torch.from_numpy(np.load(soft_targets)) if distillation else None
    if teacher_logits is not None and teacher_logits.shape != (len(targets), len(classes)):
        raise ValueError(f"{soft_targets}: soft targets for {teacher_logits.shape[0]} images, the training split "
                         f"has {len(targets)}; rebuild the teacher (doit teacher) for this dataset")
    test_x, test_y = load_split(data_dir, "test")

    model = NETWORKS[network](tuple(channels), num_classes=len(classes))
    if init_from:  # every weight comes from the .pth: nothing to whiten
        load_state(model, init_from)
    elif whitening_init:
        whiten_first_conv(model, inputs)
    model.to(memory_format=torch.channels_last)  # NHWC convolutions: about 1.4x faster on the CPU
    steps = (len(targets) + batch_size - 1) // batch_size
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    sched = make_schedule(opt, schedule, lr, epochs, steps)
    average = WeightAverage(model, ema_decay) if ema_decay else None
    deployed = average.module if average else model

    checkpoint_path = out_dir / "checkpoint.pt"
    digest = recipe_digest(recipe, data_dir / "manifest.json")
    history, start_epoch = [], 0
    if checkpoint_path.exists():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if ckpt.get("digest") == digest:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["schedule"])
            if average:
                average.load_state_dict(ckpt["average"])
            history, start_epoch = ckpt["history"], ckpt["epoch"]
            print(f"resuming from {checkpoint_path} after epoch {start_epoch}", file=sys.stderr)

    elapsed, test_seconds = (history[-1].get("seconds", 0.0) if history else 0.0), 0.0
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(targets), generator=gen)
        flips = alternating_flips(len(targets), seed, epoch) if flip == "alternating" else None
        model.train()
        total_loss, correct = 0.0, 0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stderr,
                   disable=not progress, leave=True)
        for step in bar:
            with phase("batch"):
                idx = order[step * batch_size:(step + 1) * batch_size]
                x = inputs[idx]
                if augment:
                    x = augment_batch(x, gen, crop_padding, None if flips is None else flips[idx])
                x = x.contiguous(memory_format=torch.channels_last)
            with phase("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=used == "bf16"):
                logits = model(x).float()
            with phase("loss"):
                loss = distillation_loss(logits, targets[idx],
                                         teacher_logits[idx] if distillation else None,
                                         weight=distillation, temperature=distillation_temperature,
                                         label_smoothing=label_smoothing)
            with phase("backward"):
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with phase("optimizer"):
                opt.step()
                sched.step()
            if average:
                with phase("weight average"):
                    average.update()
            with phase("statistics"):
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == targets[idx]).sum())
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        with phase("validation"):
            val_acc = evaluate(deployed, val_x, val_y)
        elapsed += time.perf_counter() - epoch_start
        history.append(dict(epoch=epoch + 1, train_loss=total_loss / len(targets),
                            train_accuracy=correct / len(targets), val_accuracy=val_acc,
                            **({"seconds": elapsed} if timed else {})))
        if test_each_epoch:
            test_start = time.perf_counter()
            history[-1]["test_accuracy"] = evaluate(deployed, test_x, test_y)
            test_seconds += time.perf_counter() - test_start
        print(f"epoch {epoch + 1}/{epochs}: loss {history[-1]['train_loss']:.4f} "
              f"train {history[-1]['train_accuracy']:.4f} val {val_acc:.4f}", file=sys.stderr)
        ckpt = dict(digest=digest, epoch=epoch + 1, model=model.state_dict(), optimizer=opt.state_dict(),
                    schedule=sched.state_dict(), average=average.state_dict() if average else None, history=history)
        with atomic.atomic_path(checkpoint_path) as tmp:
            torch.save(ckpt, tmp)

    deployed.to(memory_format=torch.contiguous_format)  # the .pth keeps PyTorch's usual NCHW weight layout
    metrics = dict(recipe=recipe, epochs=history, test_accuracy=evaluate(deployed, test_x, test_y),
                   test_images=int(len(test_y)), train_images=int(len(train_y)),
                   **({"test_each_epoch_seconds": test_seconds} if test_each_epoch else {}))
    save_state_dict(deployed, pth)
    atomic.write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_training(history, out_dir / "training.png", title=f"{preset or 'custom'} preset")
    checkpoint_path.unlink(missing_ok=True)
    return metrics



def plot_training(history, path, title: str) -> None:
    from pipeline.delivery import plots

    epochs = [h["epoch"] for h in history]
    with plots.figure(path, ncols=2, figsize=(9, 3.5)) as (fig, (ax_loss, ax_acc)):
        ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
        ax_loss.set(xlabel="epoch", ylabel="train loss", title="loss")
        ax_acc.plot(epochs, [h["train_accuracy"] for h in history], marker="o", label="train")
        ax_acc.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation")
        ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy")
        ax_acc.legend()
        fig.suptitle(title)
