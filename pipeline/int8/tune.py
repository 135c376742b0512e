"""Glow's model-tuner (tools/loader/ModelTuner.cpp) on the built-in int8 reference: per profiled tensor, try up to
`max_iter_per_node` halvings of its symmetric range, keep the best accuracy, stop a tensor when the accuracy is
exactly unchanged (the tensor has no effect) or drops more than `acc_drop_skip`, and stop everything once the
accuracy exceeds `target_accuracy`.

The tuner keeps any change that helps its few tuning images, so it can fit them and lose accuracy elsewhere;
`held_out_check` compares both profiles on held-out images the tuner never saw."""
import dataclasses

import numpy as np
from tqdm import tqdm

from pipeline.int8 import graph as int8_graph
from pipeline.model.shapes import to_input
from pipeline.int8.profile import Profile, read_profile, write_profile

# ModelTuner.cpp defaults: -max-iter-per-node=3, -acc-drop-skip=0.05, -target-accuracy=1.0 (the note uses .9).
MAX_ITER_PER_NODE = 3
ACC_DROP_SKIP = 0.05


def quantized_accuracy(graph, ranges: dict, inputs: np.ndarray, labels: np.ndarray) -> float:
    return int8_graph.accuracy(int8_graph.run_int8(int8_graph.quantize_graph(graph, ranges), inputs), labels)


def tune_profile(onnx_path, profile_path, images: np.ndarray, labels: np.ndarray, out_path,
                 target_accuracy: float = 0.9, max_iter_per_node: int = MAX_ITER_PER_NODE,
                 acc_drop_skip: float = ACC_DROP_SKIP) -> dict:
    """Tune `profile_path` on the tuning images (uint8 NHWC) and labels; write `out_path`; return the figures."""
    graph = int8_graph.load_graph(onnx_path)
    profile = read_profile(profile_path, graph)
    entries = [dataclasses.replace(e) for e in profile.entries]
    inputs, labels = to_input(images), np.asarray(labels)
    float_acc = int8_graph.accuracy(int8_graph.run_float(graph, inputs), labels)

    def acc_with(candidate):
        return quantized_accuracy(graph, {e.name: (e.min, e.max) for e in candidate}, inputs, labels)

    initial = best = acc_with(entries)
    log = []
    bar = tqdm(entries, desc="tuning profile", unit="tensor")
    for idx, entry in enumerate(bar):
        if best > target_accuracy:
            break
        bar.set_postfix(accuracy=f"{best:.4f}")
        best_range = (entry.min, entry.max)
        for _ in range(max_iter_per_node):
            if entry.min == entry.max:
                break
            half = max(abs(entry.min), abs(entry.max)) / 2.0
            entries[idx] = entry = dataclasses.replace(entry, min=-half, max=half)
            acc = acc_with(entries)
            log.append({"tensor": entry.name, "min": -half, "max": half, "accuracy": acc})
            if acc == best:
                break
            if acc > best:
                best, best_range = acc, (entry.min, entry.max)
            if acc < best - acc_drop_skip:
                break
        entries[idx] = entry = dataclasses.replace(entry, min=best_range[0], max=best_range[1])
    write_profile(Profile(profile.tools_version, profile.graph_hash, entries), out_path)
    return {"float_accuracy": float_acc, "initial_int8_accuracy": initial, "tuned_int8_accuracy": best,
            "images": int(len(labels)), "trials": log}


def held_out_check(onnx_path, untuned_path, tuned_path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Int8 accuracy of the untuned and the tuned profile on held-out images (uint8 NHWC); `kept` names the
    profile to deploy: the tuned one only if it is more accurate there (a tie shows no benefit of tuning, and
    the calibrated ranges are the ones not fitted to a few images)."""
    graph = int8_graph.load_graph(onnx_path)
    inputs, labels = to_input(images), np.asarray(labels)
    untuned, tuned = (quantized_accuracy(graph, read_profile(path, graph).ranges(), inputs, labels)
                      for path in (untuned_path, tuned_path))
    return {"images": int(len(labels)), "untuned_int8_accuracy": untuned, "tuned_int8_accuracy": tuned,
            "kept": "tuned" if tuned > untuned else "untuned"}
