"""Training-recipe ablation: the default preset, the note's preset, and variants of the default that each undo
one of its choices, trained by pipeline.train on a dataset the `dataset` task built. Prints test accuracy and
seconds per epoch for each: the evidence behind the default preset.

  python benchmarks/training_recipes.py --data build/data                       # every recipe, in turn
  python benchmarks/training_recipes.py --data build/data --only default no_average --threads 1
  python benchmarks/training_recipes.py --data build/data --only default --seeds 1 2   # seed-to-seed spread

Each recipe is a full 15-epoch run (about 11 min with 2 free cores); results go to --out/<recipe>/metrics.json
and are reused when present, so runs can be split over several processes.
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core import config  # noqa: E402
from pipeline.model import train  # noqa: E402

DEFAULT = config.TRAINING_PRESETS["default"]
# name -> (what it changes, recipe)
RECIPES = {
    "default": ("our preset", DEFAULT),
    "an13331": ("the note's recipe: Adam 0.001, batch 16, no augmentation", config.TRAINING_PRESETS["an13331"]),
    "no_average": ("last weights instead of their moving average", dict(DEFAULT, ema_decay=0.0)),
    "crop_padding_4": ("4-pixel crop instead of 2", dict(DEFAULT, crop_padding=4)),
    "label_smoothing": ("label smoothing 0.1", dict(DEFAULT, label_smoothing=0.1)),
    "weight_decay_5e-4": ("weight decay 5e-4 instead of 1e-3", dict(DEFAULT, weight_decay=5e-4)),
    "weight_decay_2e-3": ("weight decay 2e-3 instead of 1e-3", dict(DEFAULT, weight_decay=2e-3)),
    "first_default": ("the first preset's choices: lr 0.05, label smoothing 0.1, 4-pixel crop, no average",
                      dict(DEFAULT, lr=0.05, label_smoothing=0.1, crop_padding=4, ema_decay=0.0)),
}


def run(name: str, seed: int, data: Path, out: Path, threads: int, channels) -> dict:
    folder = out / (name if seed == 0 else f"{name}-seed{seed}")
    metrics_path = folder / "metrics.json"
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    print(f"[{name}, seed {seed}] training ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    metrics = train.train(data, folder / "cifar.pth", channels=channels, **RECIPES[name][1], seed=seed, threads=threads,
                          preset=name)
    metrics["seconds"] = time.perf_counter() - start
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "build" / "data", help="the dataset task's output")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "benchmarks" / "training_recipes")
    parser.add_argument("--only", nargs="+", choices=tuple(RECIPES), default=tuple(RECIPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (training.seed)")
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file():
        sys.exit(f"{args.data}: no dataset here (manifest.json missing); run `doit dataset` first or pass --data")
    channels = config.load(REPO / "pipeline.toml")["model"]["channels"]
    print("| recipe | changes | seed | test accuracy | held-out accuracy | train images | s/epoch | threads |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only:
        for seed in args.seeds:
            m = run(name, seed, args.data, args.out, args.threads, channels)
            seconds = m.get("seconds")
            per_epoch = f"{seconds / len(m['epochs']):.0f}" if seconds else "-"
            print(f"| {name} | {RECIPES[name][0]} | {seed} | {m['test_accuracy']:.2%} "
                  f"| {m['epochs'][-1]['val_accuracy']:.2%} | {m['train_images']:,} | {per_epoch} "
                  f"| {m['recipe']['threads']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
