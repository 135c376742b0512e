"""profile.yml in Glow's layout, and clear errors for bad profiles."""
import re

import numpy as np
import pytest
import yaml

from tiny_model import export_onnx, synthetic_images, train_tiny_model
from pipeline.int8 import graph as int8_graph
from pipeline.int8 import profile
from pipeline.model.shapes import to_input


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("profile")
    export_onnx(train_tiny_model(*synthetic_images(320, seed=1), steps=10), tmp / "m.onnx")
    images, _ = synthetic_images(10, seed=2)
    profile.make_profile(tmp / "m.onnx", images, tmp / "profile.yml")
    return tmp, images


def test_glow_layout(made):
    tmp, _ = made
    text = (tmp / "profile.yml").read_text()
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == 3 and list(docs[0]) == ["GlowToolsVersion"] and list(docs[1]) == ["GraphPreLowerHash"]
    assert re.search(r"^GraphPreLowerHash: 0x[0-9A-F]{16}$", text, re.M)
    assert all(list(e) == ["NodeOutputName", "Min", "Max", "Histogram"] for e in docs[2])
    assert text.count("---\n") == 3 and text.count("...\n") == 3
    # llvm::yaml pads keys to 16 columns, and floats carry every digit of the float32 value
    assert re.search(r"^  Min:             -?\d+\.\d+$", text, re.M)


def test_ranges_are_the_calibration_extremes(made):
    tmp, images = made
    graph = int8_graph.load_graph(tmp / "m.onnx")
    loaded = profile.read_profile(tmp / "profile.yml", graph)
    tensors = int8_graph.run_float(graph, to_input(images), keep_all=True)
    names = graph.profile_names()
    assert [e.name for e in loaded.entries] == list(names.values())
    assert names[graph.input_name] == "input:0"
    for tensor, values in tensors.items():
        entry = next(e for e in loaded.entries if e.name == names[tensor])
        assert entry.min == np.float32(values.min()) and entry.max == np.float32(values.max())
        assert entry.min <= entry.max and sum(entry.histogram) == values.size


def _edit(src, dst, old, new):
    text = src.read_text()
    assert old in text
    dst.write_text(text.replace(old, new, 1))


def test_min_above_max_is_rejected(made, tmp_path):
    tmp, _ = made
    text = (tmp / "profile.yml").read_text()
    first_max = re.search(r"^  Max: +(\S+)$", text, re.M).group(1)
    _edit(tmp / "profile.yml", tmp_path / "bad.yml", f"Max:             {first_max}", "Max:             -5.0")
    with pytest.raises(ValueError, match=r"bad\.yml.*'input:0' has Min .* > Max -5\.0.*Regenerate"):
        profile.read_profile(tmp_path / "bad.yml")


def test_unknown_tensor_is_rejected(made, tmp_path):
    tmp, _ = made
    _edit(tmp / "profile.yml", tmp_path / "bad.yml", "'input:0'", "'not_in_model:0'")
    graph = int8_graph.load_graph(tmp / "m.onnx")
    with pytest.raises(ValueError, match=r"bad\.yml.*not_in_model:0"):
        profile.read_profile(tmp_path / "bad.yml", graph)


@pytest.mark.parametrize("text", ["just a string\n", "---\na: 1\n---\nb: 2\n", "---\n- [unclosed\n"])
def test_malformed_yaml_is_rejected(tmp_path, text):
    (tmp_path / "bad.yml").write_text(text)
    with pytest.raises(ValueError, match=r"bad\.yml.*(not a Glow profile|cannot be read)"):
        profile.read_profile(tmp_path / "bad.yml")


def test_missing_entry_is_reported_when_quantizing(made, tmp_path):
    tmp, _ = made
    graph = int8_graph.load_graph(tmp / "m.onnx")
    ranges = profile.read_profile(tmp / "profile.yml").ranges()
    del ranges["input:0"]
    with pytest.raises(ValueError, match=r"my\.yml.*'input:0'"):
        int8_graph.quantize_graph(graph, ranges, source="my.yml")


