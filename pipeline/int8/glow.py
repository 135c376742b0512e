"""Glow backend: the app note's commands (image-classifier -dump-profile, model-tuner, model-compiler) when the
Glow tools are installed (on PATH or in $GLOW_BIN). Command lines are built by plain functions so they can be
checked without Glow; the runners raise Skipped when a tool is missing and never leave a fake artifact.

Option names are those of Glow's own sources (tools/loader/Loader.cpp and the tools'); options that only NXP's
eIQ Glow knows (-use-cmsis, -use-hifi) sit apart in the board files (`eiq_glow_flags`) and are passed only to a
model-compiler whose -help lists them: upstream Glow's option parser rejects them."""
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.core.atomic import atomic_dir, atomic_path
from pipeline.core.tools import Skipped, ToolError, find_tool, run_tool
from pipeline.model.shapes import INPUT_SHAPE

TOOLS = ("model-compiler", "model-tuner", "image-classifier")
INSTALL_HINT = ("Install Glow (NXP eIQ Glow, or build pytorch/glow) and put its bin folder on PATH or set "
                "GLOW_BIN to it.")
# The note's preprocessing, shared by profiling and tuning: [-1, 1] floats, NCHW, RGB, input named "input".
IMAGE_OPTIONS = ("-image-mode=neg1to1", "-image-layout=NCHW", "-image-channel-order=RGB")
QUANT_OPTIONS = ("-quantization-schema=symmetric_with_power2_scale", "-quantization-precision=Int8")
# The loader of model-tuner and model-compiler takes the input's type from -model-input; a bare name
# (-model-input-name=input) would be read as float [1]. image-classifier takes the type from the images.
BACKEND_OPTION = "-backend=CPU"  # Glow's default backend is the (slow) Interpreter


def model_input_option(input_name: str = "input") -> str:
    """-model-input=<name>,float,[1,3,32,32]: the network input as Glow's loader parses it."""
    return f"-model-input={input_name},float,[{','.join(map(str, INPUT_SHAPE))}]"


def find_glow() -> dict | None:
    """{tool: path} when all three Glow tools are found (GLOW_BIN first, then PATH), else None."""
    paths = {tool: find_tool(tool, "GLOW_BIN") for tool in TOOLS}
    return paths if all(paths.values()) else None


def choose_backend(requested: str = "auto") -> str:
    """"glow" or "builtin". `requested` is "auto" (Glow when found), "glow" (must be found) or "builtin"."""
    if requested not in ("auto", "glow", "builtin"):
        raise ValueError(f"quantization backend {requested!r} is not one of auto, glow, builtin; fix the config")
    if requested == "glow" and find_glow() is None:
        raise ToolError(f"quantization.backend = \"glow\" but {', '.join(TOOLS)} were not all found. "
                        f"{INSTALL_HINT} Or set quantization.backend = \"auto\" to use the built-in backend.")
    if requested == "auto":
        return "glow" if find_glow() else "builtin"
    return requested


def profile_command(tools: dict, onnx_path, image_paths, profile_out, input_name: str = "input") -> list:
    """image-classifier over one image per class, dumping the float profile (the note's step 1)."""
    return [tools["image-classifier"], *map(str, image_paths), *IMAGE_OPTIONS, f"-model={onnx_path}",
            f"-model-input-name={input_name}", f"-dump-profile={profile_out}"]


def tune_command(tools: dict, onnx_path, profile_in, dataset_dir, labels_csv, profile_out,
                 target_accuracy: float = 0.9, input_name: str = "input") -> list:
    """model-tuner on the tuning set (the note's GlowCifar10 folder with Labels.csv)."""
    return [tools["model-tuner"], f"-model={onnx_path}", model_input_option(input_name), *IMAGE_OPTIONS,
            f"-dataset-path={dataset_dir}", f"-dataset-file={labels_csv}", f"-load-profile={profile_in}",
            f"-dump-tuned-profile={profile_out}", *QUANT_OPTIONS, f"-target-accuracy={target_accuracy:g}",
            BACKEND_OPTION]


def help_option_names(help_text: str) -> frozenset:
    """Option names in LLVM's -help text: an indented `-name` (LLVM 8, eIQ Glow's) or `--name` (later LLVMs)."""
    return frozenset(re.findall(r"^\s+--?(\w[\w-]*)", help_text, flags=re.M))


@functools.lru_cache(maxsize=None)
def listed_options(tool_path: str) -> frozenset:
    """The option names `tool -help` lists."""
    try:
        result = subprocess.run([tool_path, "-help"], capture_output=True, text=True)
    except OSError as err:
        raise ToolError(f"cannot run {tool_path} -help: {err}. {INSTALL_HINT}") from err
    return help_option_names(result.stdout)


def board_glow_flags(board: dict, compiler: str | None = None) -> list:
    """The board's glow_flags, plus its eiq_glow_flags when `compiler` (a model-compiler) lists them, with $VARS
    expanded; Skipped when they need a tool or variable that is missing (the HiFi4's xt-clang and XTENSA_SYSTEM)."""
    eiq_flags = board.get("eiq_glow_flags", [])
    known = listed_options(compiler) if compiler and eiq_flags else frozenset()
    flags = []
    for flag in board["glow_flags"] + [f for f in eiq_flags if f.lstrip("-").split("=")[0] in known]:
        if flag.startswith("-llvm-compiler="):
            llvm_compiler = flag.split("=", 1)[1]
            if not (shutil.which(llvm_compiler) or Path(llvm_compiler).is_file()):
                raise Skipped(f"{llvm_compiler} not found for {board['name']} (install the Xtensa toolchain per NXP's "
                              f"RT685 HiFi4 readme and put xt-clang on PATH)")
        missing = [v for v in ("XTENSA_SYSTEM", "XTENSA_CORE") if f"${v}" in flag and not os.environ.get(v)]
        if missing:
            raise Skipped(f"{' and '.join(missing)} not set for {board['name']} (set it as in NXP's RT685 HiFi4 readme)")
        flags.append(os.path.expandvars(flag))
    return flags


def require_bundle_tools(board: dict) -> None:
    """Skipped when Glow cannot make this board's bundle here (its flags need a tool or variable that is missing):
    then the board's steps after the bundle are skipped with the same reason, not failed on a missing header."""
    board_glow_flags(board)


def bundle_command(tools: dict, onnx_path, profile_path, board: dict, bundle_dir, network_name: str = "cifar") -> list:
    """model-compiler emitting the quantized bundle with the board's flags (the note's last step)."""
    return [tools["model-compiler"], f"-model={onnx_path}", model_input_option(), f"-emit-bundle={bundle_dir}",
            BACKEND_OPTION, f"-network-name={network_name}", f"-load-profile={profile_path}", *QUANT_OPTIONS,
            "-quantization-precision-bias=Int8", *board_glow_flags(board, tools["model-compiler"])]


def _tools() -> dict:
    tools = find_glow()
    if tools is None:
        raise Skipped(f"Glow tools {', '.join(TOOLS)} not found. {INSTALL_HINT}")
    return tools


def make_profile(onnx_path, image_paths, out_path, input_name: str = "input") -> None:
    with atomic_path(out_path) as tmp:
        run_tool(profile_command(_tools(), onnx_path, image_paths, tmp, input_name), INSTALL_HINT)


def tune_profile(onnx_path, profile_path, dataset_dir, labels_csv, out_path, target_accuracy: float = 0.9,
                 input_name: str = "input") -> None:
    with atomic_path(out_path) as tmp:
        run_tool(tune_command(_tools(), onnx_path, profile_path, dataset_dir, labels_csv, tmp, target_accuracy,
                              input_name), INSTALL_HINT)


def make_bundle(onnx_path, profile_path, board: dict, out_dir, network_name: str = "cifar") -> dict:
    """Same arguments and result as pipeline.bundle.make_bundle; Glow writes <name>.o/.h/.weights.bin/.txt."""
    tools = _tools()
    with atomic_dir(out_dir) as tmp:  # a Skipped or failure removes the temp folder: no partial bundle
        run_tool(bundle_command(tools, onnx_path, profile_path, board, tmp, network_name), INSTALL_HINT)
    return {"bundle_dir": str(out_dir), "object": "compiled by Glow"}
