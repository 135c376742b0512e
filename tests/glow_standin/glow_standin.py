"""Stand-in for Glow's image-classifier, model-tuner and model-compiler (chosen by the name it is run as), for
tests on machines without Glow.

What it checks as Glow does: the command line, with LLVM's option parser rules and messages (unknown option,
enum value not among the option's values, missing value, an option given twice, positional arguments only for
image-classifier) over the option names of Glow's sources (glow_options.json); the -model-input values, as
Loader.cpp getModelInputs parses them; and that the input type the loader of model-tuner / model-compiler
would build matches the ONNX model's input (a bare name is float [1]). `-help` lists the options, in LLVM's
layout. GLOW_STANDIN_EIQ=1 adds the options only NXP's eIQ Glow has.

What it writes, so a graph can run on: the files Glow would, made by this project's built-in backend, which
is not Glow: image-classifier -dump-profile calibrates on the given images; model-tuner -dump-tuned-profile
copies the loaded profile (no tuning); model-compiler -emit-bundle writes <name>.h/.o/.weights.bin/.weights.txt
and, like Glow, no <name>.c, its object compiled for the board whose glow_flags the command carries. Each
accepted invocation is appended, with its effective options (Glow's defaults for -backend and
-quantization-precision-bias included), to the JSON-lines file GLOW_STANDIN_LOG when that is set;
GLOW_STANDIN_CHECK_ONLY=1 stops there (command-line tests, with no real inputs)."""
import json
import os
import re
import sys
from pathlib import Path

OPTIONS = json.loads((Path(__file__).with_name("glow_options.json")).read_text())
ROOT = Path(__file__).resolve().parents[2]
# Loader.cpp's cl::init defaults of the options whose default matters to the note's command lines.
DEFAULTS = {"backend": "Interpreter", "quantization-precision-bias": "Int32"}
ELEMENT_KINDS = {"float", "float16", "bfloat16", "int8q", "int16q", "int32q", "int32", "int64", "bool"}
QUANTIZED_KINDS = {"int8q", "int16q", "int32q"}
ALIASES = {"model-input-name": "model-input", "m": "model"}  # Loader.cpp's cl::alias of the options we read


def fail(program: str, message: str) -> None:
    sys.stderr.write(f"{program}: {message}\n")
    sys.exit(1)


def parse(program: str, table: dict, args: list[str]) -> tuple[dict, list[str]]:
    """LLVM cl rules: -name or --name, value after '=', enum values checked, bools take an optional value."""
    given, positional = {}, []
    for arg in args:
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        option = table.get(name)
        if option is None:
            fail(program, f"Unknown command line argument '{arg}'.  Try: '{program} --help'")
        prefix = "-" if len(name) == 1 else "--"
        if option["kind"] == "bool":
            if has_value and value not in ("true", "false", "1", "0", "TRUE", "FALSE", "True", "False"):
                fail(program, f"for the {prefix}{name} option: '{value}' is invalid value for boolean argument! "
                              "Try 0 or 1")
            value = value if has_value else "true"
        elif not has_value or value == "":
            fail(program, f"for the {prefix}{name} option: requires a value!")
        if "values" in option and value not in option["values"]:
            fail(program, f"for the {prefix}{name} option: Cannot find option named '{value}'!")
        if option["kind"] in ("list", "alias"):  # Glow's aliases (-model-input-name, -i, -m, ...) name lists
            given.setdefault(ALIASES.get(name, name), []).append(value)
        elif name in given:
            fail(program, f"for the {prefix}{name} option: may only occur zero or one times!")
        else:
            given[name] = value
    return given, positional


def model_input_types(program: str, values: list[str]) -> dict:
    """{name: (kind, shape)} as Loader.cpp getModelInputs reads -model-input (name alone: float [1])."""
    types = {}
    for text in values:
        name, _, rest = text.partition(",")
        if not name:
            fail(program, "Model input name empty")
        if name in types:
            fail(program, f'Model input name "{name}" is not unique. Check the graph definition for the input names.')
        if not rest:
            types[name] = ("float", (1,))
            continue
        kind, _, rest = rest.partition(",")
        if kind not in ELEMENT_KINDS:
            fail(program, f'Model input type "{kind}" not supported')
        if kind in QUANTIZED_KINDS:
            scale, _, rest = rest.partition(",")
            offset, _, rest = rest.partition(",")
            if not re.fullmatch(r"[-+]?[0-9.eE+-]+", scale) or not re.fullmatch(r"[-+]?\d+", offset):
                fail(program, "Model input scale/offset parameter invalid")
        if not (rest.startswith("[") and rest.endswith("]")) or not re.fullmatch(r"\d+(,\d+)*", rest[1:-1]):
            fail(program, f"Model input shape invalid: {rest!r} (expected e.g. [1,3,32,32])")
        types[name] = (kind, tuple(int(d) for d in rest[1:-1].split(",")))
    return types


def check_loader_input(program: str, given: dict) -> None:
    """model-tuner and model-compiler load the model with the -model-input types: they must be the model's."""
    import onnx

    model_path = given["model"][-1]  # -model is a list option (a Caffe2 model is two files; ONNX is one)
    model = onnx.load(model_path)
    initializers = {t.name for t in model.graph.initializer}
    inputs = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
              for i in model.graph.input if i.name not in initializers}
    for name, (kind, shape) in model_input_types(program, given.get("model-input", [])).items():
        if name not in inputs:
            fail(program, f"model input {name!r} is not an input of {model_path} (inputs: {sorted(inputs)})")
        if kind != "float" or shape != inputs[name]:
            fail(program, f"input {name!r} loaded as {kind} {list(shape)} but the model's is float "
                          f"{list(inputs[name])}: pass -model-input={name},float,[{','.join(map(str, inputs[name]))}]")


def main(argv: list[str]) -> None:
    program = Path(argv[0]).name
    table = dict(OPTIONS["tools"][program])
    if os.environ.get("GLOW_STANDIN_EIQ") == "1" and program == "model-compiler":
        table.update(OPTIONS["eiq_only"])
    if argv[1:] in (["-help"], ["--help"]):
        print(f"OVERVIEW: {program} (stand-in)\n\nUSAGE: {program} [options]\n\nOPTIONS:")
        for name in sorted(table):
            print(f"  -{name}" + ("" if table[name]["kind"] == "bool" else "=<value>"))
        return
    given, positional = parse(program, table, argv[1:])
    if positional and program != "image-classifier":
        fail(program, f"Too many positional arguments specified!\nCan specify at most 0 positional arguments: "
                      f"See: {argv[0]} --help")
    if "model" not in given:
        fail(program, "-model is required")
    if program == "image-classifier":
        model_input_types(program, given.get("model-input", []))
    else:
        check_loader_input(program, given)
    if os.environ.get("GLOW_STANDIN_LOG"):
        with open(os.environ["GLOW_STANDIN_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"tool": program, "options": {**DEFAULTS, **given}, "positional": positional}) + "\n")
    if os.environ.get("GLOW_STANDIN_CHECK_ONLY") != "1":
        write_outputs(program, given, positional, argv[1:])


def write_outputs(program: str, given: dict, positional: list[str], args: list[str]) -> None:
    """The files the real tool would write for these options (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    model = given["model"][-1]
    if program == "image-classifier" and "dump-profile" in given:
        import numpy as np
        from PIL import Image

        from pipeline.int8.profile import make_profile

        images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in positional])
        make_profile(model, images, given["dump-profile"])
    elif program == "model-tuner" and "dump-tuned-profile" in given:
        Path(given["dump-tuned-profile"]).write_bytes(Path(given["load-profile"]).read_bytes())
    elif program == "model-compiler" and "emit-bundle" in given:
        from pipeline.core.config import available_boards, load_board
        from pipeline.int8.bundle import compile_object, generate_sources

        name, out = given.get("network-name", "model"), Path(given["emit-bundle"])
        boards = [load_board(b) for b in available_boards()]
        board = next((b for b in boards if set(b["glow_flags"]) <= set(args)), None)
        if board is None:
            fail(program, f"stand-in: no boards/*.toml has glow_flags all among {args}")
        out.mkdir(parents=True, exist_ok=True)
        for file_name, data in generate_sources(model, given["load-profile"], name).items():
            (out / file_name).write_bytes(data)
        compile_object(out, board, name)
        for ours_only in (f"{name}.c", f"{name}.manifest.json"):  # Glow writes neither
            (out / ours_only).unlink()


if __name__ == "__main__":
    main(sys.argv)
