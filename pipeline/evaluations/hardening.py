"""Confidence-output hardening (NXP UM11226, model cloning and inversion): the numpy twin of mcux_app/hardening.c.

Every function works on float32 rows of confidences (N, classes), one float32 operation at a time in the C
order, so the results equal the firmware's bit for bit (pseudo_noise_sin aside: sin may differ by an ulp
between libms). The noise generator is the C file's xorshift32; rows consume its draws in order, as
successive inferences on the device do.

An option is a dict: {"method": "round", "step": 0.05}, {"method": "noise", "range": 0.1, "seed": 1} or
{"method": "pseudo_noise_sin"}.
"""
import json
from pathlib import Path

import numpy as np

from pipeline.core.atomic import write_text

F32 = np.float32
METHODS = {
    # method: (C enum, {parameter: (check, explanation)})
    "round": ("HARDENING_ROUND", {"step": (lambda v: 0 < v <= 1, "a step in (0, 1], e.g. 0.05 or 0.25")}),
    "noise": ("HARDENING_NOISE", {"range": (lambda v: 0 < v < 1, "a half-width in (0, 1), e.g. 0.1"),
                                  "seed": (lambda v: 0 < v < 2 ** 32, "an integer in [1, 2**32), e.g. 1")}),
    "pseudo_noise_sin": ("HARDENING_PSEUDO_NOISE_SIN", {}),
}


def parse_option(option, where: str = "hardening option") -> dict:
    """Validate an option dict; errors name `where`, the bad value and the valid form."""
    if not isinstance(option, dict) or option.get("method") not in METHODS:
        raise ValueError(f"{where} = {option!r}: expected a table with method one of {', '.join(METHODS)}, e.g. "
                         f'{{method = "round", step = 0.05}}')
    method = option["method"]
    params = METHODS[method][1]
    unknown = set(option) - {"method", *params}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} for method {method!r}; "
                         f"valid keys: {', '.join(['method', *params]) }")
    parsed = {"method": method}
    for name, (check, meaning) in params.items():
        value = option.get(name)
        wanted = int if name == "seed" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted) or not check(value):
            raise ValueError(f"{where}: {name} = {value!r} for method {method!r}: expected {meaning}")
        parsed[name] = value
    return parsed


def option_label(option) -> str:
    option = parse_option(option)
    if option["method"] == "round":
        return f"round {option['step']:g}"
    if option["method"] == "noise":
        return f"noise ±{option['range']:g} (seed {option['seed']})"
    return "pseudo_noise_sin"


def _c_float(value) -> str:
    """The shortest decimal that reads back as the same float32, as a C float literal."""
    return np.format_float_positional(F32(value), unique=True, trim="0") + "f"


def c_config_initializer(option) -> str:
    """A C initializer for hardening_config (hardening.h); None gives HARDENING_NONE."""
    if option is None:
        return "{HARDENING_NONE, 0.0f, 0.0f, 0u}"
    option = parse_option(option)
    return (f"{{{METHODS[option['method']][0]}, {_c_float(option.get('step', 0.0))}, "
            f"{_c_float(option.get('range', 0.0))}, {option.get('seed', 0)}u}}")


def uniform_draws(seed: int, count: int) -> np.ndarray:
    """`count` draws of hardening_uniform_f32 from xorshift32 state `seed`: float32 in [0, 1), 24 random bits."""
    state, out = seed, np.empty(count, dtype=np.uint32)
    for i in range(count):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        out[i] = state >> 8
    return out.astype(F32) * F32(1.0 / 16777216.0)


def _rows(p) -> np.ndarray:
    p = np.array(p, dtype=F32, copy=True)
    if p.ndim != 2:
        raise ValueError(f"confidences of shape {p.shape}: expected (images, classes)")
    return p


def _clamp_and_renormalise(p: np.ndarray, top: np.ndarray) -> np.ndarray:
    p = np.maximum(p, F32(0.0))
    total = np.cumsum(p, axis=1, dtype=F32)[:, -1:]  # left to right, like the C loop (np.sum is pairwise)
    empty = total[:, 0] == 0
    p = p / np.where(total == 0, F32(1.0), total)
    p[empty, top[empty]] = F32(1.0)
    return p


def _restore_top1(p: np.ndarray, top: np.ndarray) -> np.ndarray:
    rows = np.arange(len(p))
    leader = p.argmax(axis=1)
    top_value, leader_value = p[rows, top], p[rows, leader]
    p[rows, leader] = top_value
    p[rows, top] = leader_value
    return p


def harden_round(p, step: float) -> np.ndarray:
    step = F32(step)
    return np.floor(_rows(p) / step + F32(0.5)) * step


def harden_noise(p, noise_range: float, seed: int) -> np.ndarray:
    p = _rows(p)
    top = p.argmax(axis=1)
    noise = (F32(2.0) * uniform_draws(seed, p.size).reshape(p.shape) - F32(1.0)) * F32(noise_range)
    return _restore_top1(_clamp_and_renormalise(p + noise, top), top)


def harden_pseudo_noise_sin(p) -> np.ndarray:
    p = _rows(p)
    top = p.argmax(axis=1)
    wave = F32(0.1) * np.sin(F32(50.0) * (p - F32(0.09)))
    return _restore_top1(_clamp_and_renormalise((p + F32(0.05)) + wave, top), top)


def harden(p, option) -> np.ndarray:
    """Apply one option to every row of p (rows in inference order: the noise stream runs across them)."""
    option = parse_option(option)
    if option["method"] == "round":
        return harden_round(p, option["step"])
    if option["method"] == "noise":
        return harden_noise(p, option["range"], option["seed"])
    return harden_pseudo_noise_sin(p)


def evaluate_hardening(probabilities, options) -> dict:
    """Per option: top-1 agreement with the unhardened output, how far confidences move, and top-1 ties."""
    p = _rows(probabilities)
    top = p.argmax(axis=1)
    results = []
    for option in options:
        hardened = harden(p, option)
        change = np.abs(hardened - p)
        tied = (hardened == hardened.max(axis=1, keepdims=True)).sum(axis=1) > 1
        results.append({
            "label": option_label(option),
            "option": parse_option(option),
            "top1_agreement": float((hardened.argmax(axis=1) == top).mean()),
            "mean_abs_change": float(change.mean()),
            "mean_abs_change_top1": float(change[np.arange(len(p)), top].mean()),
            "max_abs_change": float(change.max()),
            "tied_top1_fraction": float(tied.mean()),
        })
    return {"images": len(p), "classes": p.shape[1], "options": results}


def markdown_table(summary: dict) -> str:
    lines = [
        f"Confidence hardening over {summary['images']} images. Top-1 agreement is with the unhardened output; "
        "when rounding ties the top class with another, the first of them counts as the decision.",
        "",
        "| option | top-1 agreement | mean abs change | mean abs change (top-1) | max abs change | top-1 tied |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in summary["options"]:
        lines.append(f"| {r['label']} | {r['top1_agreement']:.2%} | {r['mean_abs_change']:.4f} | "
                     f"{r['mean_abs_change_top1']:.4f} | {r['max_abs_change']:.4f} | {r['tied_top1_fraction']:.2%} |")
    return "\n".join(lines) + "\n"


def plot(probabilities, options, png_path, max_points: int = 2000) -> None:
    """One panel per option: hardened against original confidence for the first `max_points` images."""
    from pipeline.delivery import plots

    p = _rows(probabilities)
    with plots.figure(png_path, ncols=len(options), figsize=(3.2 * len(options), 3.4)) as (_, axes):
        axes = np.ravel(axes)  # a single option gives a single Axes
        for ax, option in zip(axes, options):
            hardened = harden(p, option)[:max_points]
            ax.scatter(p[:max_points].ravel(), hardened.ravel(), s=2, alpha=0.3)
            ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
            ax.set(title=option_label(option), xlabel="softmax confidence", xlim=(0, 1), ylim=(0, 1))
        axes[0].set_ylabel("reported confidence")


def run_evaluation(probabilities, options, out_dir) -> dict:
    """Write hardening.json, hardening.md and hardening.png to out_dir."""
    out_dir = Path(out_dir)
    summary = evaluate_hardening(probabilities, options)
    write_text(out_dir / "hardening.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_text(out_dir / "hardening.md", markdown_table(summary))
    plot(probabilities, options, out_dir / "hardening.png")
    return summary


def run_stage(pth_path, channels, data_dir, out_dir, options, split: str = "test") -> dict:
    """The doit stage: the float model's softmax over a split, evaluated under every option."""
    from pipeline.model.dataset import load_split
    from pipeline.model.evaluation import load_model, softmax, torch_logits

    images, _ = load_split(data_dir, split)
    options = [parse_option(o, where=f"hardening.evaluate[{i}]") for i, o in enumerate(options)]
    return run_evaluation(softmax(torch_logits(load_model(pth_path, channels), images)), options, out_dir)
