"""Training recipes side by side: the default preset (three seeds), the note's an13331 preset, and the ablations
behind the default, each trained by pipeline.model.train and deployed through the pipeline's own stages (ONNX
export, profile, tuning, the int8 bundle's C on the host) on a dataset the `dataset` and `image_folders` tasks
built. Prints, per run, float and deployed int8 test accuracy and training wall-clock; then the presets' wall-
clock side by side, the mean of the default's seeds, fp32 against bf16, and the teacher's cost.

  python benchmarks/training_recipes.py --data build/data                  # every recipe (about 2 h)
  python benchmarks/training_recipes.py --data build/data --only default --seeds 0 1 2
  python benchmarks/training_recipes.py --data build/data --curves docs/training_curves.json   # the report's
  python benchmarks/training_recipes.py --data build/data --only an13331 default --seeds 0   # the note's first

The seed-0 runs of both presets record their test accuracy after every epoch (not counted in their wall-clock;
nothing is chosen by it). Each run goes to --out/<recipe>-seed<N>/; finished runs are reused, so a benchmark can
be split over several processes. The teacher (distillation) is trained once into --out/teacher/ and its cost is
printed apart. Timed figures need the machine to itself.
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core import config  # noqa: E402
from pipeline.core.layout import TRAINING_CURVES  # noqa: E402
from pipeline.int8 import quantize  # noqa: E402
from pipeline.model import distill, export, train  # noqa: E402

CONFIG = config.load(REPO / "pipeline.toml")
DEFAULT = config.TRAINING_PRESETS["default"]
AN13331 = config.TRAINING_PRESETS["an13331"]
# fp32 against bf16 on one recipe: the previous default's (weight decay 1e-3), 8 epochs, from the labels (no
# teacher); measured before the default's weight decay changed, and kept so the comparison stays the one measured.
SHORT = dict(DEFAULT, epochs=8, distillation=0.0, weight_decay=1e-3)


@dataclass(frozen=True)
class Recipe:
    what: str
    recipe: dict
    seeds: tuple     # run by default
    deploy: bool     # also quantize and measure the deployed int8 model (else float only)


RECIPES = {
    "default": Recipe("our preset", DEFAULT, (0, 1, 2), True),
    "an13331": Recipe("the note's recipe: Adam 0.001, batch 16, no augmentation, fp32", AN13331, (0,), True),
    "no_distillation": Recipe("the default without the teacher (labels only)", dict(DEFAULT, distillation=0.0),
                              (0,), True),
    "weight_decay_1e-3": Recipe("the default with the previous weight decay", dict(DEFAULT, weight_decay=1e-3),
                                (0,), True),
    "whitening_alternating": Recipe("the default with whitening_init and alternating flips",
                                    dict(DEFAULT, flip="alternating", whitening_init=True), (0, 1, 2), True),
    "short_fp32": Recipe("the previous default, 8 epochs, labels only, fp32", dict(SHORT, precision="fp32"),
                         (0, 1), False),
    "short_bf16": Recipe("the same in bf16", dict(SHORT, precision="bf16"), (0, 1), False),
}
CURVES = ("default", "an13331")  # their seed-0 runs record the test accuracy of every epoch (--curves, the report)


def teacher_run(data: Path, out: Path, threads: int) -> dict:
    folder = out / "teacher"
    if not (folder / "soft_targets.npy").is_file():
        print("[teacher] training ...", file=sys.stderr, flush=True)
        teacher = CONFIG["teacher"]
        start = time.perf_counter()
        metrics = distill.teacher(data, folder, channels=teacher["channels"], seed=teacher["seed"], threads=threads,
                                  progress=False, timed=True, **{key: teacher[key] for key in config.RECIPE_KEYS})
        metrics["seconds"] = time.perf_counter() - start  # training and soft targets
        (folder / "benchmark.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return json.loads((folder / "benchmark.json").read_text())


def deployed_accuracy(pth: Path, data: Path) -> dict:
    """The pipeline's chain from .pth to the deployed int8 bundle, with pipeline.toml's settings: float (ONNX
    Runtime) and int8 (the bundle's C, tuned profile as deployed) test accuracy."""
    folder = pth.parent
    onnx_path, profile, tuned = folder / "cifar.onnx", folder / "profile.yml", folder / "profile_tuned.yml"
    export.export(pth, onnx_path, data_dir=data, channels=CONFIG["model"]["channels"],
                  test_data_dir=folder / "test_data_set_0", **config.stage_settings(CONFIG, "export"))
    quantize.profile_stage("builtin", onnx_path, data, profile, **config.stage_settings(CONFIG, "profile"))
    quantize.tune_stage("builtin", onnx_path, profile, data, tuned, **config.stage_settings(CONFIG, "tune"))
    result = quantize.accuracy_stage(onnx_path, {"deployed": tuned}, data, folder / "accuracy.json", "cifar",
                                     **config.stage_settings(CONFIG, "accuracy"))
    return {"float": result["float_accuracy"], "int8": result["int8_deployed_accuracy"]}


def run(name: str, seed: int, data: Path, out: Path, threads: int) -> dict:
    folder = out / f"{name}-seed{seed}"
    result_path = folder / "benchmark.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    recipe = RECIPES[name].recipe
    soft_targets = ""
    if recipe["distillation"]:
        soft_targets = out / "teacher" / "soft_targets.npy"
        teacher_run(data, out, threads)
    print(f"[{name}, seed {seed}] training ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    metrics = train.train(data, folder / "cifar.pth", channels=CONFIG["model"]["channels"], **recipe, seed=seed,
                          threads=threads, preset=name, soft_targets=soft_targets, timed=True,
                          test_each_epoch=name in CURVES and seed == 0, progress=False)
    # wall-clock of the whole call (loading the data, every epoch, the final test), less the per-epoch test
    # evaluations the plain stage does not make
    metrics["wall_clock"] = time.perf_counter() - start - metrics.get("test_each_epoch_seconds", 0.0)
    if RECIPES[name].deploy:
        metrics["deployed"] = deployed_accuracy(folder / "cifar.pth", data)
    result_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def mean_and_spread(values) -> str:
    values = list(values)
    return f"{statistics.mean(values):.2%} ({min(values):.2%}-{max(values):.2%}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "build" / "data",
                        help="the dataset and image_folders tasks' output")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "benchmarks" / "training_recipes")
    parser.add_argument("--only", nargs="+", choices=tuple(RECIPES), default=tuple(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: each recipe's own)")
    parser.add_argument("--threads", type=int, default=CONFIG["training"]["threads"])
    parser.add_argument("--curves", type=Path, help="also write the default and an13331 runs' test accuracy "
                                                     f"per epoch and wall-clock here (the report plots "
                                                     f"{TRAINING_CURVES})")
    args = parser.parse_args()
    if not (args.data / "manifest.json").is_file() or not (args.data / "images").is_dir():
        sys.exit(f"{args.data}: no dataset with its image folders here; run `doit image_folders` first or pass "
                 f"--data")
    runs = {(name, seed): run(name, seed, args.data, args.out, args.threads)
            for name in args.only for seed in (args.seeds or RECIPES[name].seeds)}

    print("| recipe | what | seed | precision | epochs | float test | deployed int8 test | training wall-clock "
          "| s/epoch |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for (name, seed), m in runs.items():
        epochs = len(m["epochs"])
        int8 = f"{m['deployed']['int8']:.2%}" if "deployed" in m else "-"
        print(f"| {name} | {RECIPES[name].what} | {seed} | {m['recipe']['precision_used']} | {epochs} "
              f"| {m['test_accuracy']:.2%} | {int8} | {m['wall_clock']:.0f} s "
              f"| {m['epochs'][-1]['seconds'] / epochs:.1f} |")
    print()
    for name in args.only:
        seeds = [m for (n, _), m in runs.items() if n == name]
        if len(seeds) > 1:
            int8 = (f", deployed int8 {mean_and_spread(m['deployed']['int8'] for m in seeds)}"
                    if RECIPES[name].deploy else "")
            print(f"{name}: float {mean_and_spread(m['test_accuracy'] for m in seeds)}{int8}, wall-clock "
                  f"{statistics.mean(m['wall_clock'] for m in seeds):.0f} s")
    side_by_side = [(name, m) for (name, seed), m in runs.items() if name in CURVES and seed == 0]
    if len(side_by_side) == 2:
        print("presets side by side (seed 0): " + "; ".join(
            f"{name} {m['wall_clock']:.0f} s ({m['wall_clock'] / 60:.1f} min), float {m['test_accuracy']:.2%}, "
            f"int8 {m['deployed']['int8']:.2%}" for name, m in side_by_side))
        (_, ours), (_, note) = sorted(side_by_side, key=lambda item: item[0] != "default")
        reached = next((e for e in ours["epochs"] if e["test_accuracy"] >= note["test_accuracy"]), None)
        if reached:
            print(f"the default reaches the an13331 preset's final float test accuracy ({note['test_accuracy']:.2%}) "
                  f"after epoch {reached['epoch']}, {reached['seconds']:.0f} s of training "
                  f"({note['epochs'][-1]['seconds']:.0f} s for an13331)")
    if any(RECIPES[name].recipe["distillation"] for name in args.only):
        teacher = teacher_run(args.data, args.out, args.threads)
        print(f"teacher ({CONFIG['teacher']['channels']}, trained once, cached as its own step): test "
              f"{teacher['test_accuracy']:.2%}, {teacher['seconds']:.0f} s with its soft targets "
              f"({teacher['epochs'][-1]['seconds'] / len(teacher['epochs']):.1f} s/epoch)")
    if args.curves:
        curves = {name: [dict(seconds=round(e["seconds"], 1), test_accuracy=e["test_accuracy"]) for e in m["epochs"]]
                  for name, m in side_by_side}
        args.curves.write_text(json.dumps(dict(
            measured_by="benchmarks/training_recipes.py", threads=args.threads, seed=0, curves=curves), indent=2)
            + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
