"""Bundle: Glow's header ABI and weight formats; the generated C (portable and DSP paths) is bit-exact with the
int8 NumPy reference; per-board objects are cross-compiled deterministically."""
import dataclasses
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tiny_model import export_onnx, synthetic_images, train_tiny_model
from pipeline.int8 import bundle
from pipeline.int8 import graph as int8_graph
from pipeline.int8 import profile
from pipeline.int8 import quantize
from pipeline.model.shapes import count_macs, to_input
from pipeline.core.tools import Skipped

BOARDS = Path(__file__).resolve().parents[1] / "boards"
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")


def board(name):
    return tomllib.loads((BOARDS / f"{name}.toml").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    export_onnx(train_tiny_model(*synthetic_images(320, seed=1), steps=20), tmp / "m.onnx")
    calib, _ = synthetic_images(10, seed=11)
    profile.make_profile(tmp / "m.onnx", calib, tmp / "profile.yml")
    files = bundle.generate_sources(tmp / "m.onnx", tmp / "profile.yml")
    (tmp / "src").mkdir()
    for name, data in files.items():
        (tmp / "src" / name).write_bytes(data)
    return tmp


def macros(header: str) -> dict:
    return {m: int(v) for m, v in re.findall(r"#define (CIFAR_\w+)\s+(\d+)", header)}


def test_header_matches_glow_static_api(built):
    header = (built / "src" / "cifar.h").read_text()
    m = macros(header)
    assert {"CIFAR_input", "CIFAR_output", "CIFAR_CONSTANT_MEM_SIZE", "CIFAR_MUTABLE_MEM_SIZE",
            "CIFAR_ACTIVATIONS_MEM_SIZE", "CIFAR_MEM_ALIGN"} <= set(m)
    assert m["CIFAR_MEM_ALIGN"] == 64 and all(v % 64 == 0 for v in m.values())
    assert "#define GLOW_MEM_ALIGN(size)" in header and "#define GLOW_GET_ADDR(" in header
    assert "int cifar(uint8_t *constantWeight, uint8_t *mutableWeight, uint8_t *activations);" in header
    # placeholders fit the mutable memory without overlapping: float 1x3x32x32 in, float 1x10 out
    assert m["CIFAR_input"] + 4 * 3 * 32 * 32 <= m["CIFAR_output"]
    assert m["CIFAR_output"] + 4 * 10 <= m["CIFAR_MUTABLE_MEM_SIZE"]
    assert "//   Type: float<1 x 3 x 32 x 32>" in header and "//   Type: float<1 x 10>" in header
    total = m["CIFAR_CONSTANT_MEM_SIZE"] + m["CIFAR_MUTABLE_MEM_SIZE"] + m["CIFAR_ACTIVATIONS_MEM_SIZE"]
    assert f"// Total data size: {total} (bytes)" in header


def test_network_name_is_a_parameter(built):
    files = bundle.generate_sources(built / "m.onnx", built / "profile.yml", network_name="net2")
    assert "#define NET2_CONSTANT_MEM_SIZE" in files["net2.h"].decode()
    assert "int net2(uint8_t *constantWeight" in files["net2.c"].decode()
    with pytest.raises(ValueError, match="not a C identifier"):
        bundle.generate_sources(built / "m.onnx", built / "profile.yml", network_name="bad-name")


def test_weights_bin_and_txt_agree(built):
    data = (built / "src" / "cifar.weights.bin").read_bytes()
    assert len(data) == macros((built / "src" / "cifar.h").read_text())["CIFAR_CONSTANT_MEM_SIZE"]
    lines = (built / "src" / "cifar.weights.txt").read_text().splitlines()
    assert all(len(line.split(",")) - 1 == 20 for line in lines[:-1]) and 1 <= len(lines[-1].split(",")) - 1 <= 20
    assert all(re.fullmatch(r"( 0X[0-9A-F]{2},)+", line) for line in lines)
    assert bytes(int(v, 16) for v in re.findall(r"0X([0-9A-F]{2})", "".join(lines))) == data


def test_memory_plan_reuses_buffers(built):
    graph = int8_graph.load_graph(built / "m.onnx")
    qm = int8_graph.quantize_graph(graph, profile.read_profile(built / "profile.yml").ranges())
    plan = bundle.plan_memory(qm)
    all_tensors = sum(int(np.prod(graph.shapes[op.output])) for op in qm.ops if op.kind not in ("flatten",))
    assert plan.activations_size < all_tensors


def _plan_with(plan, **changes):
    return dataclasses.replace(plan, activation_offsets={**plan.activation_offsets, **changes.get("offsets", {})},
                               in_place=changes.get("in_place", plan.in_place))


def test_memory_plan_check_catches_overlapping_live_buffers(built):
    graph = int8_graph.load_graph(built / "m.onnx")
    qm = int8_graph.quantize_graph(graph, profile.read_profile(built / "profile.yml").ranges())
    plan = bundle.plan_memory(qm)  # checks itself
    convs = [i for i, op in enumerate(qm.ops) if op.kind == "conv"]
    # the pooled convs that keep their channel count (8 -> 8, 16 -> 16) write over their dying input; the first
    # (3 -> 8, unpooled) and the widening third (8 -> 16) cannot
    assert plan.in_place == {convs[1], convs[3]}
    conv2, conv3 = qm.ops[convs[1]], qm.ops[convs[2]]
    assert plan.activation_offsets[conv2.output] == plan.activation_offsets[conv2.inputs[0]]
    # a planner that puts conv3's output on its input (alive together, not declared in place) is refused
    broken = _plan_with(plan, offsets={conv3.output: plan.activation_offsets[conv3.inputs[0]]})
    with pytest.raises(ValueError, match="overlaps"):
        bundle.check_plan(qm, broken)
    # declaring it in place does not help: a later step of conv3 still reads input bytes that an earlier one writes
    assert not bundle.conv_in_place_safe(qm, conv3)
    with pytest.raises(ValueError, match="overlaps"):
        bundle.check_plan(qm, _plan_with(broken, in_place=plan.in_place | {convs[2]}))
    # scratch over a live input, also the input an in-place conv is still reading
    for i in (convs[0], convs[1]):
        with pytest.raises(ValueError, match="scratch"):
            on_input = {("scratch", i): plan.activation_offsets[qm.ops[i].inputs[0]]}
            bundle.check_plan(qm, _plan_with(plan, offsets=on_input))


@needs_gcc
@pytest.mark.parametrize("dsp_shim", [False, True], ids=["portable", "dsp-shim"])
def test_generated_c_is_bit_exact_with_numpy_reference(built, tmp_path, dsp_shim):
    images, _ = synthetic_images(1000, seed=12)
    x = to_input(images)
    graph = int8_graph.load_graph(built / "m.onnx")
    qm = int8_graph.quantize_graph(graph, profile.read_profile(built / "profile.yml").ranges())
    # the network's three MaxPools run inside the conv kernel, which pools accumulators; the reference pools the
    # requantized conv output as the unfused graph does
    assert [op.pool for op in qm.ops if op.kind == "conv"] == [1, 2, 2, 2] and "maxpool" not in {o.kind for o in qm.ops}
    expected = int8_graph.run_int8(qm, x)
    runner = bundle.build_host_runner(built / "src", tmp_path, dsp_shim=dsp_shim)
    got = bundle.run_host_bundle(runner, built / "src" / "cifar.weights.bin", x, tmp_path)
    np.testing.assert_array_equal(got, expected)
    # outputs are int8 values at the output scale, and not all the same class
    assert len(set(got.argmax(1))) > 1


@needs_gcc
def test_left_shift_requantization_is_bit_exact(built, tmp_path):
    """Output ranges far below the accumulator's scale make the convs requantize by a left shift: the kernels'
    out-of-line general path, with and without the fused pool."""
    prof = profile.read_profile(built / "profile.yml")
    relus = [entry for entry in prof.entries if "Relu" in entry.name]
    for entry in (relus[0], relus[-1]):  # the first conv (no pool) and the last (pooled)
        entry.min, entry.max = 0.0, 0.005
    profile.write_profile(prof, tmp_path / "profile.yml")
    graph = int8_graph.load_graph(built / "m.onnx")
    qm = int8_graph.quantize_graph(graph, profile.read_profile(tmp_path / "profile.yml").ranges())
    assert {op.pool for op in qm.ops if op.kind == "conv" and op.shift <= 0} == {1, 2}
    (tmp_path / "src").mkdir()
    for name, data in bundle.generate_sources(built / "m.onnx", tmp_path / "profile.yml").items():
        (tmp_path / "src" / name).write_bytes(data)
    x = to_input(synthetic_images(200, seed=15)[0])
    expected = int8_graph.run_int8(qm, x)
    for dsp_shim in (False, True):
        runner = bundle.build_host_runner(tmp_path / "src", tmp_path / "host", dsp_shim=dsp_shim)
        np.testing.assert_array_equal(bundle.run_host_bundle(runner, tmp_path / "src" / "cifar.weights.bin", x,
                                                             tmp_path / "host"), expected)


@needs_arm
@pytest.mark.parametrize("name", ["rt1060", "rt685_m33"])
def test_arm_object_has_dsp_path_and_is_deterministic(built, tmp_path, name):
    first = bundle.compile_object(built / "src", board(name), target=tmp_path / "a.o")
    second = bundle.compile_object(built / "src", board(name), target=tmp_path / "b.o")
    assert first.read_bytes() == second.read_bytes()
    disasm = subprocess.run(["arm-none-eabi-objdump", "-d", str(first)], capture_output=True, text=True).stdout
    assert "smlad" in disasm and "sxtb16" in disasm
    symbols = subprocess.run(["arm-none-eabi-nm", str(first)], capture_output=True, text=True).stdout
    assert re.search(r" T cifar$", symbols, re.M) and re.search(r" T conv2d_s8$", symbols, re.M)
    assert not re.search(r" U (?!memset|memcpy)", symbols)  # self-contained apart from libc memset
    assert str(tmp_path).encode() not in first.read_bytes() and b"/tmp" not in first.read_bytes()


def test_board_too_small_for_the_plan_is_refused_before_compiling(built, tmp_path):
    small = board("rt1060")
    small["memory"]["dtcm"]["length"] = 16 * 1024
    with pytest.raises(ValueError) as err:
        bundle.make_bundle(built / "m.onnx", built / "profile.yml", small, tmp_path / "bundle")
    manifest = json.loads(bundle.generate_sources(built / "m.onnx", built / "profile.yml")["cifar.manifest.json"])
    need = manifest["memory"]["mutable"] + manifest["memory"]["activations"] + small["firmware"]["stack_size"]
    message = str(err.value)
    assert "rt1060.toml" in message and "'dtcm' (16,384 B)" in message and "activations" in message
    assert f"{need - 16 * 1024:,} B missing" in message and "[firmware.placement]" in message
    assert not (tmp_path / "bundle").exists()  # nothing compiled, nothing half-written


def test_xtensa_board_is_skipped_without_toolchain(built, tmp_path, monkeypatch):
    monkeypatch.delenv("XTENSA_TOOLS", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("xt-clang"):
        pytest.skip("an Xtensa toolchain is installed")
    result = bundle.make_bundle(built / "m.onnx", built / "profile.yml", board("rt685_hifi4"), tmp_path / "bundle")
    assert result["object"].startswith("skipped: no Xtensa toolchain") and "XTENSA_TOOLS" in result["object"]
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == \
            ["cifar.c", "cifar.h", "cifar.manifest.json", "cifar.weights.bin", "cifar.weights.txt"]
    with pytest.raises(Skipped):
        bundle.compile_object(tmp_path / "bundle", board("rt685_hifi4"))


@needs_gcc
def test_accuracy_stage_reports_float_and_int8_accuracy(built, tmp_path):
    images, labels = synthetic_images(150, seed=13)
    np.save(tmp_path / "test_images.npy", images)
    np.save(tmp_path / "test_labels.npy", labels)
    out = tmp_path / "accuracy.json"
    result = quantize.accuracy_stage(built / "m.onnx", {"untuned": built / "profile.yml"}, tmp_path, out, "cifar",
                                     eval_images=0)
    assert json.loads(out.read_text()) == result
    assert result["images"] == 150 and 0.0 <= result["int8_untuned_accuracy"] <= 1.0
    assert abs(result["float_accuracy"] - result["int8_untuned_accuracy"]) <= 0.1
    assert result["float_accuracy"] > 0.2  # the small model learned something (chance is 0.1)


@needs_gcc
def test_full_size_cifarnet_is_bit_exact(tmp_path):
    """The real layer sizes (K = 27, 288, 576, 2048) through both C paths."""
    import torch

    from pipeline.model.network import CifarNet

    torch.manual_seed(1)
    export_onnx(CifarNet().eval(), tmp_path / "full.onnx")
    images, _ = synthetic_images(16, seed=14)
    profile.make_profile(tmp_path / "full.onnx", images[:10], tmp_path / "profile.yml")
    for name, data in bundle.generate_sources(tmp_path / "full.onnx", tmp_path / "profile.yml").items():
        (tmp_path / name).write_bytes(data)
    manifest = json.loads((tmp_path / "cifar.manifest.json").read_text())
    assert sum(layer["macs"] for layer in manifest["layers"]) == count_macs() == 19_779_584
    header = macros((tmp_path / "cifar.h").read_text())
    assert manifest["input"]["offset"] == header["CIFAR_input"]
    assert manifest["output"]["offset"] == header["CIFAR_output"]
    assert manifest["memory"] == {"constant": header["CIFAR_CONSTANT_MEM_SIZE"],
                                  "mutable": header["CIFAR_MUTABLE_MEM_SIZE"],
                                  "activations": header["CIFAR_ACTIVATIONS_MEM_SIZE"]}
    assert manifest["input"]["size"] == 4 * 3 * 32 * 32 and manifest["output"]["size"] == 4 * 10
    graph = int8_graph.load_graph(tmp_path / "full.onnx")
    expected = int8_graph.run_int8(int8_graph.quantize_graph(graph, profile.read_profile(tmp_path / "profile.yml")
                                                             .ranges()), to_input(images))
    for dsp_shim in (False, True):
        runner = bundle.build_host_runner(tmp_path, tmp_path / "host", dsp_shim=dsp_shim)
        got = bundle.run_host_bundle(runner, tmp_path / "cifar.weights.bin", to_input(images), tmp_path / "host")
        np.testing.assert_array_equal(got, expected)


@needs_arm
def test_make_bundle_is_deterministic(built, tmp_path):
    outputs = []
    for run in ("a", "b"):
        result = bundle.make_bundle(built / "m.onnx", built / "profile.yml", board("rt1060"), tmp_path / run / "bundle")
        assert result["object"] == "compiled"
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / run / "bundle").iterdir())})
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0]) == ["cifar.c", "cifar.h", "cifar.manifest.json", "cifar.o", "cifar.weights.bin",
                                  "cifar.weights.txt"]


def _export_odd_model(path, softmax: bool):
    """Odd channel and pixel counts, K not a multiple of 4, a strided conv without ReLU, a residual Add,
    a padded MaxPool and optionally Softmax: the kernels' edge paths."""
    import torch

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
            self.b = torch.nn.Conv2d(5, 5, 1)
            self.c = torch.nn.Conv2d(5, 5, 3, padding=1)
            self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1)
            self.fc = torch.nn.Linear(5 * 5 * 5, 7)

        def forward(self, x):
            y = self.a(x)
            y = torch.relu(self.b(y) + self.c(y))
            y = self.fc(torch.flatten(self.pool(y), 1))
            return torch.softmax(y, dim=1) if softmax else y

    torch.manual_seed(3)
    model = Odd().eval()
    torch.onnx.export(model, torch.zeros(1, 3, 17, 17), str(path), input_names=["input"], output_names=["output"],
                      opset_version=13, dynamo=False)


@needs_gcc
@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_odd_shapes_add_and_softmax(tmp_path, softmax):
    _export_odd_model(tmp_path / "odd.onnx", softmax)
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (40, 17, 17, 3), dtype=np.uint8)
    profile.make_profile(tmp_path / "odd.onnx", images[:8], tmp_path / "profile.yml")
    graph = int8_graph.load_graph(tmp_path / "odd.onnx")
    assert {op.kind for op in graph.ops} >= {"conv", "add", "relu", "maxpool", "flatten", "fc"}
    for name, data in bundle.generate_sources(tmp_path / "odd.onnx", tmp_path / "profile.yml").items():
        (tmp_path / name).write_bytes(data)
    qm = int8_graph.quantize_graph(graph, profile.read_profile(tmp_path / "profile.yml").ranges())
    expected = int8_graph.run_int8(qm, to_input(images))
    for dsp_shim in (False, True):
        runner = bundle.build_host_runner(tmp_path, tmp_path / "host", dsp_shim=dsp_shim)
        got = bundle.run_host_bundle(runner, tmp_path / "cifar.weights.bin", to_input(images), tmp_path / "host")
        if softmax:  # expf vs NumPy's exp: the same logits, last-bit differences
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_array_equal(got, expected)
