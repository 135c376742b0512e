"""Input-transformation hardening against adversarial examples (NXP UM11226), evaluated on the host.

Each image is classified as it is and after a few small transformations (rotation, blur, additive noise, JPEG
re-encoding); the copies vote. The attack is FGSM against the plain float model (white box, not adapted to the
voting). Epsilons are in pixel levels of the uint8 image (0..255): an adversarial image is
clip(image + epsilon * sign(gradient), 0, 255), still a valid uint8 image, as a camera would deliver it.
In the model's [-1, 1] input space that is epsilon / 127.5.

A transform is a dict: {"kind": "rotate", "degrees": 8}, {"kind": "blur", "radius": 0.6},
{"kind": "noise", "sigma": 6, "seed": 0} (Gaussian, pixel levels), {"kind": "jpeg", "quality": 60}.
"""
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from tqdm import tqdm

from pipeline.core.atomic import write_text
from pipeline.model.evaluation import balanced_subset, load_model, softmax, torch_logits
from pipeline.model.shapes import to_input

TRANSFORMS = {
    # kind: {parameter: (type, check, explanation)}
    "rotate": {"degrees": ((int, float), lambda v: -45 <= v <= 45, "degrees in [-45, 45], e.g. 8")},
    "blur": {"radius": ((int, float), lambda v: 0 <= v <= 4, "a Gaussian radius in pixels in [0, 4], e.g. 0.6")},
    "noise": {"sigma": ((int, float), lambda v: 0 <= v <= 64, "a standard deviation in pixel levels, e.g. 6"),
              "seed": (int, lambda v: v >= 0, "a non-negative integer")},
    "jpeg": {"quality": (int, lambda v: 1 <= v <= 100, "an integer in [1, 100], e.g. 60")},
}
# The defaults live in the config schema, the one place users see them.


def parse_transform(spec, where: str = "transform") -> dict:
    """Validate a transform dict; errors name `where`, the bad value and the valid form."""
    if not isinstance(spec, dict) or spec.get("kind") not in TRANSFORMS:
        raise ValueError(f"{where} = {spec!r}: expected a table with kind one of {', '.join(TRANSFORMS)}, "
                         f'e.g. {{kind = "rotate", degrees = 8}}')
    params = TRANSFORMS[spec["kind"]]
    unknown = set(spec) - {"kind", *params}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} for kind {spec['kind']!r}; "
                         f"valid keys: {', '.join(['kind', *params])}")
    for name, (kind, check, meaning) in params.items():
        value = spec.get(name)
        if isinstance(value, bool) or not isinstance(value, kind) or not check(value):
            raise ValueError(f"{where}: {name} = {value!r} for kind {spec['kind']!r}: expected {meaning}")
    return dict(spec)


def parse_epsilons(epsilons, where: str = "epsilons") -> list[int]:
    """FGSM strengths in pixel levels: integers in [0, 255], so adversarial images stay exact uint8 images."""
    if not isinstance(epsilons, (list, tuple)) or not all(
            isinstance(e, int) and not isinstance(e, bool) and 0 <= e <= 255 for e in epsilons):
        raise ValueError(f"{where} = {epsilons!r}: expected a list of integers in [0, 255] (pixel levels), "
                         f"e.g. [1, 2, 4, 8]")
    return sorted({0, *epsilons})


def transform_label(spec) -> str:
    spec = parse_transform(spec)
    return {"rotate": lambda: f"rotate {spec['degrees']:+g}°", "blur": lambda: f"blur r={spec['radius']:g}",
            "noise": lambda: f"noise σ={spec['sigma']:g}", "jpeg": lambda: f"jpeg q={spec['quality']}"}[spec["kind"]]()


def _per_image(images, change) -> np.ndarray:
    return np.stack([np.asarray(change(Image.fromarray(image)), dtype=np.uint8) for image in images])


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def apply_transform(images, spec) -> np.ndarray:
    """A transformed copy of uint8 NHWC images."""
    spec = parse_transform(spec)
    images = np.asarray(images, dtype=np.uint8)
    if spec["kind"] == "rotate":
        return _per_image(images, lambda im: im.rotate(spec["degrees"], resample=Image.BILINEAR))
    if spec["kind"] == "blur":
        return _per_image(images, lambda im: im.filter(ImageFilter.GaussianBlur(spec["radius"])))
    if spec["kind"] == "jpeg":
        return _per_image(images, lambda im: _jpeg(im, spec["quality"]))
    noise = np.random.default_rng(spec["seed"]).normal(0.0, spec["sigma"], size=images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def fgsm(model: torch.nn.Module, images, labels, epsilon: int, batch_size: int = 256) -> np.ndarray:
    """Fast gradient sign attack on uint8 NHWC images, epsilon in pixel levels; returns uint8 images."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size])
        x = torch.from_numpy(to_input(batch)).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), torch.as_tensor(labels[start:start + batch_size]),
                                                 reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
        step = epsilon * gradient.sign().permute(0, 2, 3, 1).numpy().astype(np.int16)
        out.append(np.clip(batch.astype(np.int16) + step, 0, 255).astype(np.uint8))
    return np.concatenate(out)


def vote(logits_per_copy) -> np.ndarray:
    """Majority of the copies' top-1 classes; a tie goes to the class with the higher mean probability.

    The mean probability is scaled by 0.5 so it can only break ties, never outweigh a vote."""
    logits_per_copy = np.asarray(logits_per_copy, dtype=np.float32)  # (copies, images, classes)
    copies, count, classes = logits_per_copy.shape
    votes = np.zeros((count, classes), dtype=np.float32)
    for logits in logits_per_copy:
        votes[np.arange(count), logits.argmax(axis=1)] += 1
    mean_probability = np.mean([softmax(logits) for logits in logits_per_copy], axis=0)
    return (votes + 0.5 * mean_probability).argmax(axis=1)


def evaluate_robustness(model: torch.nn.Module, images, labels, transforms, epsilons) -> dict:
    """Accuracy with and without voting, on clean images and under FGSM at each epsilon (pixel levels)."""
    transforms = [parse_transform(t, where=f"transforms[{i}]") for i, t in enumerate(transforms)]
    labels = np.asarray(labels)
    rows = []
    for epsilon in tqdm(parse_epsilons(epsilons), desc="robustness", unit="epsilon"):
        attacked = images if epsilon == 0 else fgsm(model, images, labels, epsilon)
        plain = torch_logits(model, attacked)
        copies = [torch_logits(model, apply_transform(attacked, t)) for t in transforms]
        rows.append({
            "epsilon": epsilon,
            "accuracy": float((plain.argmax(axis=1) == labels).mean()),
            "voted_accuracy": float((vote([plain, *copies]) == labels).mean()),
            "transform_accuracy": {transform_label(t): float((c.argmax(axis=1) == labels).mean())
                                   for t, c in zip(transforms, copies)},
        })
    return {"images": len(labels), "epsilon_unit": "pixel levels of 0..255 (epsilon / 127.5 in the [-1, 1] input)",
            "attack": "FGSM on the plain float model (white box, not adapted to voting)",
            "voters": ["original", *map(transform_label, transforms)], "results": rows}


def markdown_table(result: dict) -> str:
    lines = [f"Accuracy over {result['images']} images; {result['attack']}; epsilon in {result['epsilon_unit']}. "
             f"Voters: {', '.join(result['voters'])}.", "",
             "| attack | accuracy | accuracy with voting |", "| --- | ---: | ---: |"]
    for row in result["results"]:
        name = "clean" if row["epsilon"] == 0 else f"FGSM ε={row['epsilon']}"
        lines.append(f"| {name} | {row['accuracy']:.2%} | {row['voted_accuracy']:.2%} |")
    singles = list(result["results"][0]["transform_accuracy"])
    lines += ["", "Each transformed copy on its own:", "",
              "| attack | " + " | ".join(singles) + " |", "| --- |" + " ---: |" * len(singles)]
    for row in result["results"]:
        name = "clean" if row["epsilon"] == 0 else f"FGSM ε={row['epsilon']}"
        lines.append(f"| {name} | " + " | ".join(f"{row['transform_accuracy'][s]:.2%}" for s in singles) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, png_path) -> None:
    from pipeline.delivery import plots

    epsilons = [row["epsilon"] for row in result["results"]]
    with plots.figure(png_path, figsize=(6, 4)) as (_, ax):
        for label in result["results"][0]["transform_accuracy"]:
            ax.plot(epsilons, [row["transform_accuracy"][label] for row in result["results"]], linewidth=0.8,
                    linestyle="--", alpha=0.6, label=label)
        ax.plot(epsilons, [row["accuracy"] for row in result["results"]], "o-", color="black", label="plain")
        ax.plot(epsilons, [row["voted_accuracy"] for row in result["results"]], "s-", color="tab:red", label="voting")
        ax.set(xlabel="FGSM epsilon (pixel levels)", ylabel="accuracy", ylim=(0, 1),
               title=f"Input-transformation voting, {result['images']} images")
        ax.legend(fontsize=7)


def run_evaluation(model: torch.nn.Module, images, labels, out_dir, transforms, epsilons) -> dict:
    """Write robustness.json, robustness.md and robustness.png to out_dir."""
    out_dir = Path(out_dir)
    result = evaluate_robustness(model, images, labels, transforms, epsilons)
    write_text(out_dir / "robustness.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_text(out_dir / "robustness.md", markdown_table(result))
    plot(result, out_dir / "robustness.png")
    return result


def run_stage(pth_path, channels, data_dir, out_dir, transforms, epsilons,
              max_images: int = 1000, split: str = "test") -> dict:
    """The doit stage: `max_images` of a split, balanced over the classes (0 = all), through run_evaluation."""
    from pipeline.model.dataset import load_split

    images, labels = load_split(data_dir, split)
    keep = balanced_subset(labels, max_images)
    images, labels = images[keep], labels[keep]
    return run_evaluation(load_model(pth_path, channels), images, labels, out_dir, transforms, epsilons)
