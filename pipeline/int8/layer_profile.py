"""Per-layer profile: a firmware build whose bundle times every kernel call (bundle.make_bundle(layer_profile=True);
main.c prints "Layer k cycles" after each image), run under QEMU like `emulate`, and the per-layer table
(instructions, MACs, instructions per MAC) and bar chart the report shows per board."""
import json
from pathlib import Path

import numpy as np

from pipeline.core.atomic import save_png, write_bytes, write_text
from pipeline.int8 import bundle


def profile_stage(board: dict, *, onnx_path, profile_path, image_inc, images, labels, out_dir, network: str,
                  timeout: float = 120.0) -> dict:
    """Build the layer_profile firmware of `board` under out_dir (bundle/, source/, firmware.elf, ...) and run it
    under emulation on its test image (image_inc) and `images` (uint8 NHWC, at least one), checked against the host
    bundle like `emulate`. Writes out_dir/emulator.json, whose images have "layer_instructions" (layer k = the
    manifest's layer k)."""
    from pipeline.firmware import emulator, link

    out_dir = Path(out_dir)
    bundle.make_bundle(onnx_path, profile_path, board, out_dir / "bundle", network, layer_profile=True)
    source = out_dir / "source"
    write_bytes(source / "input_image_test.inc", Path(image_inc).read_bytes())
    elfs = link.firmware_stage(board, bundle_dir=out_dir / "bundle", source_dir=source, out_dir=out_dir,
                               network=network, labels=labels)
    return emulator.emulation_stage(board, elf=elfs["emulator_elf"], bundle_dir=out_dir / "bundle",
                                    image_inc=source / "input_image_test.inc",
                                    images=images, labels=labels, out_dir=out_dir, network=network, timeout=timeout)


def layer_rows(manifest: dict, summary: dict) -> list[dict]:
    """The manifest's layers with the instructions the first image spent in each (summary: emulator.json of a
    layer_profile build) and instructions per MAC (None for layers without MACs)."""
    counts = summary["images"][0].get("layer_instructions")
    if counts is None or len(counts) != len(manifest["layers"]):
        raise ValueError(f"emulator summary has {0 if counts is None else len(counts)} layer counts but the bundle "
                         f"{manifest['name']!r} has {len(manifest['layers'])} layers; rebuild it with layer_profile "
                         f"(layer_profile.profile_stage) and run it again")
    return [{**layer, "instructions": count, "per_mac": count / layer["macs"] if layer["macs"] else None}
            for layer, count in zip(manifest["layers"], counts)]


def markdown_table(rows: list[dict]) -> str:
    """One board's per-layer table with totals (each layer's count includes one call of the timing hook)."""
    lines = ["| # | Kernel | Output | Instructions | MACs | Instructions / MAC |", "|---|---|---|---|---|---|"]
    for row in rows:
        kernel = row["kernel"] + (" + 2x2 max pool" if row["fused_pool"] else "")
        per_mac = "—" if row["per_mac"] is None else f"{row['per_mac']:.3f}"
        lines.append(f"| {row['layer']} | `{kernel}` | `{row['output']}` | {row['instructions']:,} | {row['macs']:,} "
                     f"| {per_mac} |")
    total, macs = sum(r["instructions"] for r in rows), sum(r["macs"] for r in rows)
    lines.append(f"| | **all layers** | | **{total:,}** | **{macs:,}** | **{total / macs:.3f}** |" if macs else
                 f"| | **all layers** | | **{total:,}** | 0 | — |")
    return "\n".join(lines) + "\n"


def bar_chart(rows_by_board: dict[str, list[dict]], png_path) -> Path:
    """Instructions per layer, one bar group per board (a PNG for the report)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    boards = list(rows_by_board)
    layers = rows_by_board[boards[0]]
    width = 0.8 / len(boards)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(layers)), 4.0))
    for b, name in enumerate(boards):
        ax.bar(np.arange(len(layers)) + b * width, [r["instructions"] / 1e6 for r in rows_by_board[name]], width,
               label=name)
    ax.set_xticks(np.arange(len(layers)) + width * (len(boards) - 1) / 2)
    ax.set_xticklabels([f"{r['layer']}: {r['kernel']}" for r in layers], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("instructions per inference (millions)")
    ax.set_title("Instructions per layer (QEMU -icount, layer_profile build)")
    ax.legend()
    fig.tight_layout()
    save_png(png_path, fig)
    plt.close(fig)
    return Path(png_path)


def report_stage(profile_dirs: dict[str, str], out_md, out_png, network: str) -> None:
    """The report's per-layer section: {board name: profile_stage's out_dir} -> a markdown file (a table per board)
    and a bar chart PNG (write_report's `sections` and `figures`)."""
    rows_by_board = {name: layer_rows(bundle.read_manifest(Path(d) / "bundle", network),
                                      json.loads((Path(d) / "emulator.json").read_text(encoding="utf-8")))
                     for name, d in profile_dirs.items()}
    text = "".join(f"### {name}\n\n{markdown_table(rows)}\n" for name, rows in rows_by_board.items())
    write_text(out_md, text)
    bar_chart(rows_by_board, out_png)


def layer_profile_stage(board: dict, *, onnx_path, profile_path, data_dir, image_inc, out_dir, network: str,
                        timeout: float) -> list[dict]:
    """The doit stage: profile_stage on the board's test image and the first test image, then out_dir/layers.json
    with the report's per-layer rows [{"name", "kind", "macs", "instructions"}] of the test image."""
    from pipeline.model.dataset import load_classes, load_split

    images, _ = load_split(data_dir, "test")
    summary = profile_stage(board, onnx_path=onnx_path, profile_path=profile_path, image_inc=image_inc,
                            images=images[:1], labels=load_classes(data_dir), out_dir=out_dir, network=network,
                            timeout=timeout)
    manifest = json.loads((Path(out_dir) / "bundle" / f"{network}.manifest.json").read_text(encoding="utf-8"))
    rows = [{"name": row["node"], "kind": row["kernel"], "macs": row["macs"], "instructions": row["instructions"]}
            for row in layer_rows(manifest, summary)]
    write_text(Path(out_dir) / "layers.json", json.dumps(rows, indent=2) + "\n")
    return rows
