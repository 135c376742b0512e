"""Seconds per training epoch before and after this pipeline's speed work, with where each epoch's time goes.

  python benchmarks/training_speed.py --data build/data [--soft-targets build/model/teacher/soft_targets.npy]

"before": the previous default (float32; deterministic mode filling every new tensor with NaN, PyTorch's
default; each block's ReLU before its pool). "after": the default preset (bf16 autocast, no fill, ReLU after
the pool in training: pipeline.model.network.ConvBlock), distilled when --soft-targets is given (the
loss then reads the teacher's logits), else from the labels. Each mode trains one whole epoch of
pipeline.model.train twice: once timed, once under torch.profiler, which sums the loop's labelled phases
(pipeline.model.train.phase) and the operators taking the most time. Needs the machine to itself.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.utils.deterministic  # noqa: E402
from torch import nn  # noqa: E402

from pipeline.core import config  # noqa: E402
from pipeline.model import network, train  # noqa: E402

CONFIG = config.load(REPO / "pipeline.toml")
DEFAULT = config.TRAINING_PRESETS["default"]
# mode: (recipe, NaN fill, ReLU before the pool in training too)
MODES = {
    "before": (dict(DEFAULT, precision="fp32", distillation=0.0), True, True),
    "after": (DEFAULT, False, False),
}


def one_epoch(data: Path, recipe: dict, fill: bool, notes_order: bool, threads: int, soft_targets) -> dict:
    real_setup, real_forward = train.setup_determinism, network.ConvBlock.forward

    def setup(*args):
        real_setup(*args)
        torch.utils.deterministic.fill_uninitialized_memory = fill

    train.setup_determinism = setup
    if notes_order:
        network.ConvBlock.forward = nn.Sequential.forward
    try:
        with tempfile.TemporaryDirectory() as out:
            return train.train(data, Path(out) / "cifar.pth", channels=CONFIG["model"]["channels"],
                               **dict(recipe, epochs=1), threads=threads, soft_targets=soft_targets, timed=True,
                               progress=False)
    finally:
        train.setup_determinism, network.ConvBlock.forward = real_setup, real_forward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "build" / "data", help="the dataset task's output")
    parser.add_argument("--soft-targets", type=Path, help="the teacher's soft targets (the teacher task's output)")
    parser.add_argument("--threads", type=int, default=CONFIG["training"]["threads"])
    parser.add_argument("--top", type=int, default=8, help="operators listed per mode")
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        sys.exit(f"{args.data}: no dataset here (manifest.json missing); run `doit dataset` first or pass --data")
    summary = {}
    for mode, (recipe, fill, notes_order) in MODES.items():
        recipe = dict(recipe, distillation=recipe["distillation"] if args.soft_targets else 0.0)
        start = time.perf_counter()
        metrics = one_epoch(args.data, recipe, fill, notes_order, args.threads, str(args.soft_targets or ""))
        call_seconds = time.perf_counter() - start
        epoch_seconds = metrics["epochs"][0]["seconds"]
        steps = -(-metrics["train_images"] // recipe["batch_size"])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            one_epoch(args.data, recipe, fill, notes_order, args.threads, str(args.soft_targets or ""))
        events = profiler.key_averages()
        phases = {e.key.removeprefix(train.PHASE_PREFIX): e.cpu_time_total / 1e6 for e in events
                  if e.key.startswith(train.PHASE_PREFIX)}
        operators = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
        summary[mode] = epoch_seconds
        distilled = ", distilled" if recipe["distillation"] else ""
        print(f"## {mode}: {metrics['recipe']['precision_used']}{distilled}, "
              f"{'NaN fill' if fill else 'no fill'}, ReLU {'before' if notes_order else 'after'} the pool, "
              f"batch {recipe['batch_size']}, {steps} steps, {args.threads} threads")
        print(f"epoch {epoch_seconds:.1f} s ({epoch_seconds / steps * 1000:.1f} ms/step); the whole call with "
              f"data loading and the final test: {call_seconds:.1f} s")
        profiled = sum(phases.values())
        print("| phase (profiled epoch) | s/epoch | ms/step | share |")
        print("|---|---:|---:|---:|")
        for name, seconds in sorted(phases.items(), key=lambda item: -item[1]):
            print(f"| {name} | {seconds:.2f} | {seconds / steps * 1000:.2f} | {seconds / profiled:.0%} |")
        print(f"| operators, top {args.top} by own time | s/epoch | ms/step | calls/step |")
        for e in operators[:args.top]:
            print(f"| {e.key} | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / 1e3 / steps:.2f} "
                  f"| {e.count / steps:.0f} |")
        print()
    print(f"s/epoch: before {summary['before']:.1f}, after {summary['after']:.1f} "
          f"({summary['before'] / summary['after']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
