"""mcux_app/hardening.c against its numpy twin pipeline/hardening.py, and the evaluation stage.

The C file is compiled for the host with gcc and called through ctypes. Round and noise must match bit for
bit (same float32 operations in the same order, -ffp-contract=off); pseudo_noise_sin to 4 float32 ulps of 1.0
(4.8e-7), because C's sinf and numpy's float32 sin are different implementations allowed to differ by an ulp,
and that ulp passes through an add, a sum of ten terms and a division.
"""
import ctypes
import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import config
from pipeline.evaluations import hardening

ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "mcux_app" / "hardening.c"
SIN_TOLERANCE = 4 * np.finfo(np.float32).eps
CONFIG_OPTIONS = [None, {"method": "round", "step": 0.05}, {"method": "noise", "range": 0.1, "seed": 7},
                  {"method": "pseudo_noise_sin"}]


class HardeningConfig(ctypes.Structure):
    _fields_ = [("method", ctypes.c_int), ("step", ctypes.c_float), ("noise_range", ctypes.c_float),
                ("rng_state", ctypes.c_uint32)]


@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: install it (apt-get install gcc) to compile mcux_app/hardening.c for the host")
    folder = tmp_path_factory.mktemp("hardening")
    configs = folder / "configs.c"
    configs.write_text('#include "hardening.h"\n' + "".join(
        f"const hardening_config config_{i} = {hardening.c_config_initializer(o)};\n"
        for i, o in enumerate(CONFIG_OPTIONS)))
    library = folder / "libhardening.so"
    subprocess.run(["gcc", "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-shared",
                    "-fPIC", f"-I{C_SOURCE.parent}", str(C_SOURCE), str(configs), "-o", str(library), "-lm"],
                   check=True)
    lib = ctypes.CDLL(str(library))
    lib.harden_confidences.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int,
                                       ctypes.POINTER(HardeningConfig)]
    lib.hardening_uniform_f32.restype = ctypes.c_float
    lib.hardening_uniform_f32.argtypes = [ctypes.POINTER(ctypes.c_uint32)]
    return lib


def c_harden(lib, p, config: HardeningConfig) -> np.ndarray:
    """Row by row through harden_confidences with one config, as successive inferences on the device."""
    out = np.array(p, dtype=np.float32, copy=True)
    for row in out:
        lib.harden_confidences(row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(row), ctypes.byref(config))
    return out


def softmax_rows(count=3000, classes=10, seed=0) -> np.ndarray:
    """Softmax outputs from confident to nearly flat, like a classifier's over a test set."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(count, classes)) * rng.uniform(0.1, 8.0, size=(count, 1))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def test_uniform_draws_follow_the_c_generator(clib):
    state = ctypes.c_uint32(2463534242)
    from_c = np.array([clib.hardening_uniform_f32(ctypes.byref(state)) for _ in range(1000)], dtype=np.float32)
    np.testing.assert_array_equal(hardening.uniform_draws(2463534242, 1000), from_c)
    assert 0.0 <= from_c.min() and from_c.max() < 1.0 and 0.45 < from_c.mean() < 0.55


@pytest.mark.parametrize("step", [0.05, 0.25])
def test_round_matches_c_exactly(clib, step):
    p = softmax_rows()
    from_c = c_harden(clib, p, HardeningConfig(1, step, 0.0, 0))
    np.testing.assert_array_equal(hardening.harden_round(p, step), from_c)
    multiples = from_c / np.float32(step)
    np.testing.assert_allclose(multiples, np.round(multiples), atol=1e-4)
    assert np.abs(from_c - p).max() <= step / 2 + 1e-6


@pytest.mark.parametrize("noise_range", [0.1, 0.5])
def test_noise_matches_c_exactly_and_keeps_top1(clib, noise_range):
    p, seed = softmax_rows(), 12345
    config = HardeningConfig(2, 0.0, noise_range, seed)
    from_c = c_harden(clib, p, config)
    from_python = hardening.harden_noise(p, noise_range, seed)
    np.testing.assert_array_equal(from_python, from_c)
    top = p.argmax(axis=1)
    np.testing.assert_array_equal(from_c.argmax(axis=1), top)
    np.testing.assert_allclose(from_c.sum(axis=1), 1.0, atol=1e-5)
    assert from_c.min() >= 0.0
    # The generator's state after the run is the one the Python stream reaches after as many draws.
    state = ctypes.c_uint32(seed)
    for _ in range(p.size):
        clib.hardening_uniform_f32(ctypes.byref(state))
    assert config.rng_state == state.value
    # Without the swap back, the noise would have changed some decisions: the restoring step was exercised.
    naive = p + (2 * hardening.uniform_draws(seed, p.size).reshape(p.shape) - 1) * np.float32(noise_range)
    assert (naive.argmax(axis=1) != top).any()


def test_noise_that_clamps_everything_puts_all_confidence_on_the_top1(clib):
    p = np.tile(np.array([[0.01, 0.02]], dtype=np.float32), (200, 1))
    from_c = c_harden(clib, p, HardeningConfig(2, 0.0, 0.9, 99))
    np.testing.assert_array_equal(hardening.harden_noise(p, 0.9, 99), from_c)
    one_hot = (from_c == [0.0, 1.0]).all(axis=1)
    assert one_hot.any() and (from_c.argmax(axis=1) == 1).all()


def test_pseudo_noise_sin_matches_c_and_keeps_top1(clib):
    p = softmax_rows()
    from_c = c_harden(clib, p, HardeningConfig(3, 0.0, 0.0, 0))
    from_python = hardening.harden_pseudo_noise_sin(p)
    np.testing.assert_allclose(from_python, from_c, rtol=0, atol=SIN_TOLERANCE)
    top = p.argmax(axis=1)
    np.testing.assert_array_equal(from_c.argmax(axis=1), top)
    np.testing.assert_array_equal(from_python.argmax(axis=1), top)
    # Against the formula in float64, c + 0.05 + 0.1 sin(50 (c - 0.09)) clamped and renormalised, on the rows
    # where it keeps the top class by itself (the others get the swap back).
    wide = p.astype(np.float64)
    expected = np.maximum(wide + 0.05 + 0.1 * np.sin(50 * (wide - 0.09)), 0)
    expected /= expected.sum(axis=1, keepdims=True)
    kept = expected.argmax(axis=1) == top
    assert 0.5 < kept.mean() < 1.0
    np.testing.assert_allclose(from_c[kept], expected[kept], atol=1e-6)


def test_c_initializers_compile_to_the_python_values(clib):
    for i, option in enumerate(CONFIG_OPTIONS):
        config = HardeningConfig.in_dll(clib, f"config_{i}")
        parsed = hardening.parse_option(option) if option else {"method": None}
        method = [None, "round", "noise", "pseudo_noise_sin"].index(parsed["method"])
        assert config.method == method
        assert config.step == np.float32(parsed.get("step", 0.0))
        assert config.noise_range == np.float32(parsed.get("range", 0.0))
        assert config.rng_state == parsed.get("seed", 0)


def test_round_can_tie_and_the_evaluation_says_so():
    p = np.array([[0.6, 0.4], [0.4, 0.6], [1.0, 0.0]], dtype=np.float32)
    summary = hardening.evaluate_hardening(p, [{"method": "round", "step": 0.25}])
    result = summary["options"][0]
    # 0.6 and 0.4 both round to 0.5: rows 1 and 2 tie; argmax takes the first class, wrong for row 2.
    assert result["tied_top1_fraction"] == pytest.approx(2 / 3)
    assert result["top1_agreement"] == pytest.approx(2 / 3)
    assert result["mean_abs_change"] == pytest.approx((0.1 * 4 + 0.0) / 6, abs=1e-6)


def test_evaluation_keeps_top1_for_noise_and_pseudo_noise_sin(tmp_path):
    p = softmax_rows(count=500, seed=3)
    options = [{"method": "round", "step": 0.25}, {"method": "noise", "range": 0.2, "seed": 5},
               {"method": "pseudo_noise_sin"}]
    summary = hardening.run_evaluation(p, options, tmp_path)
    by_method = {r["option"]["method"]: r for r in summary["options"]}
    assert by_method["noise"]["top1_agreement"] == 1.0
    assert by_method["pseudo_noise_sin"]["top1_agreement"] == 1.0
    assert by_method["round"]["top1_agreement"] < 1.0  # step 0.25 loses information on flat rows
    assert all(r["mean_abs_change"] > 0 for r in summary["options"])
    assert json.loads((tmp_path / "hardening.json").read_text()) == summary
    assert "pseudo_noise_sin" in (tmp_path / "hardening.md").read_text()
    png = (tmp_path / "hardening.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    hardening.plot(p, options, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == png, "the plot must be deterministic"


@pytest.mark.parametrize("option, fragment", [
    ({"method": "blur"}, "method one of round, noise, pseudo_noise_sin"),
    ({"method": "round"}, "step = None"),
    ({"method": "round", "step": 0}, "step = 0"),
    ({"method": "noise", "range": 0.1, "seed": 0}, "seed = 0"),
    ({"method": "noise", "range": 0.1, "seed": 1, "sigma": 2}, "unknown key 'sigma'"),
])
def test_bad_options_are_named(option, fragment):
    with pytest.raises(ValueError, match="hardening.firmware.rt1060") as err:
        hardening.parse_option(option, where="hardening.firmware.rt1060")
    assert fragment in str(err.value)


@pytest.mark.parametrize("board", sorted(p.stem for p in (ROOT / "boards").glob("*.toml")))
def test_c_file_compiles_cleanly_for_each_arm_board(board, tmp_path):
    spec = tomllib.loads((ROOT / "boards" / f"{board}.toml").read_text())
    compiler = f"{spec['toolchain']}-gcc"
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found: board {board} needs its toolchain on PATH")
    subprocess.run([compiler, *spec["cflags"], "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra",
                    "-Werror", "-c", str(C_SOURCE), "-o", str(tmp_path / "hardening.o")], check=True)


def test_stage_evaluates_the_model_softmax_over_the_split(tmp_path):
    import torch

    from pipeline.model.network import CifarNet
    from tiny_model import TINY_CHANNELS, synthetic_images

    torch.manual_seed(0)
    torch.save(CifarNet(channels=TINY_CHANNELS).state_dict(), tmp_path / "cifar.pth")
    images, labels = synthetic_images(60, seed=5)
    np.save(tmp_path / "test_images.npy", images)
    np.save(tmp_path / "test_labels.npy", labels)
    options = config.SCHEMA["evaluation"]["hardening_options"].default
    summary = hardening.run_stage(tmp_path / "cifar.pth", TINY_CHANNELS, tmp_path, tmp_path / "out", options)
    assert summary["images"] == 60
    assert [r["label"] for r in summary["options"]] == [hardening.option_label(o) for o in options]
    assert all(r["top1_agreement"] == 1.0 for r in summary["options"] if r["option"]["method"] != "round")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hardening.json", "hardening.md", "hardening.png"]
