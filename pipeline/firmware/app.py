"""The app's sources for a board: main.c rendered from mcux_app/main.c.j2 around the bundle's header and the
test image, checked against Glow's bundle ABI first."""
import re
from pathlib import Path

import jinja2
import numpy as np

from pipeline.core.atomic import write_text
from pipeline import ROOT
from pipeline.evaluations import hardening as hardening_c
from pipeline.int8.bundle import header_macros, read_manifest
from pipeline.model.shapes import INPUT_SHAPE

RESOURCES = ("mcux_app",)  # templates and C sources of the app (see pipeline/core/deps.py)
MCUX_APP = ROOT / RESOURCES[0]
HARDENING_SOURCE = "hardening.c"
REQUIRED_MACROS = ("CONSTANT_MEM_SIZE", "MUTABLE_MEM_SIZE", "ACTIVATIONS_MEM_SIZE", "MEM_ALIGN")


def _jinja() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(MCUX_APP)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def check_bundle_header(header_path, network: str, input_name: str = "input", output_name: str = "output") -> dict:
    """Macros of the bundle header, after checking it has Glow's bundle ABI for `network`."""
    macros = header_macros(header_path)
    prefix = network.upper()
    needed = [f"{prefix}_{name}" for name in (input_name, output_name, *REQUIRED_MACROS)]
    missing = [name for name in needed if name not in macros]
    if missing:
        raise ValueError(f"{header_path}: missing {', '.join(missing)}; the bundle must have Glow's ABI for network "
                         f"{network!r} with placeholders {input_name!r}/{output_name!r} (rebuild the bundle, or set "
                         f"project.name to the network name the bundle was built with)")
    return macros


def read_image_inc_bytes(inc_path) -> bytes:
    """The bytes an input_image_test.inc holds (` 0XNN,` items; `//` lines are comments)."""
    text = "\n".join(l for l in Path(inc_path).read_text(encoding="ascii").splitlines() if not l.startswith("//"))
    return bytes(int(byte, 16) for byte in re.findall(r"0X([0-9A-F]{2})\s*,", text))


def read_image_inc(inc_path) -> np.ndarray:
    """The float32 input tensor stored in an input_image_test.inc (float32 little-endian bytes), flat."""
    return np.frombuffer(read_image_inc_bytes(inc_path), dtype="<f4").astype(np.float32)


def render_main_c(out_path, *, network: str, labels, description: str, header_path, image_inc_path,
                  input_bytes: int, input_name: str = "input", output_name: str = "output",
                  hardening: dict | None = None) -> Path:
    """Write main.c for `network` from mcux_app/main.c.j2. `hardening` is a confidence-hardening option of
    pipeline.hardening (e.g. {"method": "round", "step": 0.05}) or None; with one, main.c calls
    harden_confidences (mcux_app/hardening.c) after softmax."""
    check_bundle_header(header_path, network, input_name, output_name)
    found = len(read_image_inc_bytes(image_inc_path))
    if found != input_bytes:
        raise ValueError(f"{image_inc_path}: holds {found} bytes but the network input takes {input_bytes} "
                         f"(float32 {input_bytes // 4} values); regenerate it for this model's input shape")
    if not labels or any('"' in str(label) or "\\" in str(label) for label in labels):
        raise ValueError(f"class labels {labels!r}: need at least one label, without quotes or backslashes")
    # A bundle built with layer_profile (its manifest says so; Glow's bundles have none) needs the timing hook.
    bundle_dir = Path(header_path).parent
    manifest = read_manifest(bundle_dir, network) if (bundle_dir / f"{network}.manifest.json").is_file() else {}
    text = _jinja().get_template("main.c.j2").render(
        layer_count=len(manifest["layers"]) if manifest.get("layer_profile") else 0,
        network=network, NET=network.upper(), description=description, labels=[str(l) for l in labels],
        input_name=input_name, output_name=output_name, input_bytes=input_bytes,
        hardening=hardening and {"initializer": hardening_c.c_config_initializer(hardening),
                                 "label": hardening_c.option_label(hardening)})
    write_text(out_path, text)
    return Path(out_path)


def render_board_main_c(board: dict, *, labels, bundle_dir, source_dir, network: str,
                        hardening: dict | None = None) -> Path:
    """<source_dir>/main.c for the board, beside its input_image_test.inc."""
    return render_main_c(Path(source_dir) / "main.c", network=network, labels=labels,
                         description=board["description"], header_path=Path(bundle_dir) / f"{network}.h",
                         image_inc_path=Path(source_dir) / "input_image_test.inc",
                         input_bytes=4 * int(np.prod(INPUT_SHAPE)), hardening=hardening)


def main_c_stage(board: dict, *, data_dir, bundle_dir, source_dir, network: str, hardening: dict | None = None):
    """The doit stage: main.c with the dataset's class names as labels."""
    from pipeline.model.dataset import load_classes

    render_board_main_c(board, labels=load_classes(data_dir), bundle_dir=bundle_dir, source_dir=source_dir,
                        network=network, hardening=hardening)
