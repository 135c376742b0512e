"""Calibration profile in Glow's own YAML layout (lib/Quantization/Serialization.cpp):
three documents, `GlowToolsVersion`, `GraphPreLowerHash`, then one entry per node output with
`NodeOutputName` ("<node>:<result>"), `Min`, `Max` and `Histogram`."""
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.int8 import graph as int8_graph
from pipeline.core.atomic import write_text
from pipeline.model.shapes import to_input

HISTOGRAM_BINS = 10  # Glow's default profiling histogram size
TOOLS_VERSION = "built-in int8 backend"


@dataclass
class ProfileEntry:
    name: str
    min: float
    max: float
    histogram: list


@dataclass
class Profile:
    tools_version: str
    graph_hash: int
    entries: list

    def ranges(self) -> dict:
        return {e.name: (e.min, e.max) for e in self.entries}


def model_hash(onnx_path) -> int:
    """A stable 64-bit id of the model file (stands in for Glow's GraphPreLowerHash, which we cannot compute)."""
    return int.from_bytes(hashlib.sha256(Path(onnx_path).read_bytes()).digest()[:8], "big")


def calibrate(graph: int8_graph.Graph, images: np.ndarray, bins: int = HISTOGRAM_BINS) -> list:
    """Min/max/histogram of every node output over the images (uint8 NHWC)."""
    if len(images) == 0:
        raise ValueError("calibration needs at least one image; got none (check the calibration image count)")
    tensors = int8_graph.run_float(graph, to_input(images), keep_all=True)
    entries = []
    for tensor, name in graph.profile_names().items():
        values = tensors[tensor]
        lo, hi = float(values.min()), float(values.max())
        counts, _ = np.histogram(values, bins=bins, range=(lo, hi) if hi > lo else (lo, lo + 1.0))
        entries.append(ProfileEntry(name, lo, hi, [float(c) for c in counts]))
    return entries


def make_profile(onnx_path, images: np.ndarray, out_path, bins: int = HISTOGRAM_BINS) -> Profile:
    """Calibrate the ONNX model on `images` (uint8 NHWC, e.g. one per class) and write Glow's profile.yml."""
    profile = Profile(TOOLS_VERSION, model_hash(onnx_path), calibrate(int8_graph.load_graph(onnx_path), images, bins))
    write_profile(profile, out_path)
    return profile


def _glow_float(value: float) -> str:
    """Glow's FloatWrapper: every digit of the float32 value ("%.126f"), trailing zeros stripped."""
    text = "%.126f" % float(np.float32(value))
    return text.rstrip("0") + ("0" if text.rstrip("0").endswith(".") else "")


def _yaml_key(key: str) -> str:
    # llvm::yaml::Output pads keys to 16 columns.
    return f"{key}:" + " " * max(1, 16 - len(key))


def write_profile(profile: Profile, path) -> None:
    lines = ["---", f"{_yaml_key('GlowToolsVersion')}'{profile.tools_version}'", "...",
             "---", f"{_yaml_key('GraphPreLowerHash')}0x{profile.graph_hash:016X}", "...", "---"]
    for e in profile.entries:
        hist = ", ".join("%g" % c for c in e.histogram)
        quoted = e.name.replace("'", "''")
        lines += [f"- {_yaml_key('NodeOutputName')}'{quoted}'", f"  {_yaml_key('Min')}{_glow_float(e.min)}",
                  f"  {_yaml_key('Max')}{_glow_float(e.max)}", f"  {_yaml_key('Histogram')}[ {hist} ]"]
    lines.append("...")
    write_text(path, "\n".join(lines) + "\n")


def _bad(path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}. Regenerate it with make_profile (or Glow's -dump-profile) for this model.")


def read_profile(path, graph: int8_graph.Graph | None = None) -> Profile:
    """Load and validate a profile; with `graph`, also check that every entry names a tensor of the model."""
    import yaml

    path = Path(path)
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as err:
        raise _bad(path, f"cannot be read as YAML ({err})") from err
    if len(docs) != 3 or not isinstance(docs[0], dict) or "GlowToolsVersion" not in docs[0] \
            or not isinstance(docs[1], dict) or "GraphPreLowerHash" not in docs[1] or not isinstance(docs[2], list):
        raise _bad(path, "is not a Glow profile: expected 3 YAML documents (GlowToolsVersion, GraphPreLowerHash, "
                         "then a list of NodeOutputName/Min/Max/Histogram entries)")
    entries = []
    for i, item in enumerate(docs[2]):
        if not isinstance(item, dict) or not {"NodeOutputName", "Min", "Max", "Histogram"} <= set(item):
            raise _bad(path, f"entry {i} ({item!r}) lacks NodeOutputName, Min, Max or Histogram")
        try:
            lo, hi = float(item["Min"]), float(item["Max"])
            hist = [float(v) for v in item["Histogram"]]
        except (TypeError, ValueError) as err:
            raise _bad(path, f"entry {item['NodeOutputName']!r} has a non-numeric Min/Max/Histogram ({err})") from err
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise _bad(path, f"entry {item['NodeOutputName']!r} has a non-finite range Min={lo} Max={hi}")
        if lo > hi:
            raise _bad(path, f"entry {item['NodeOutputName']!r} has Min {lo} > Max {hi}")
        entries.append(ProfileEntry(str(item["NodeOutputName"]), lo, hi, hist))
    if graph is not None:
        known = set(graph.profile_names().values())
        unknown = [e.name for e in entries if e.name not in known]
        if unknown:
            raise _bad(path, f"names tensors the model does not have: {unknown[:5]} (the model's are e.g. "
                             f"{sorted(known)[:3]})")
    graph_hash = docs[1]["GraphPreLowerHash"]
    return Profile(str(docs[0]["GlowToolsVersion"] or ""), int(graph_hash) if graph_hash is not None else 0, entries)
