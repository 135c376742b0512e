"""build/report.md: our figures beside the app note's, derived numbers computed from the inputs, accuracy read
from the JSON files it is given, skipped steps listed with their reasons, and bad inputs named."""
import json

import pytest

from pipeline.delivery import report
from pipeline.core.config import load_board

MACS = 19_797_504


def emulator_summary(instructions: int, top1: int = 7, label: str = "horse", confidence: float = 0.9871):
    return {"machine": "mps2-an500", "icount_shift": 0, "instructions_per_tick": 40.0,
            "instructions_per_inference": instructions,
            "images": [{"image": 0, "top1": top1, "label": label, "confidence": confidence, "cycles": 1,
                        "instructions": instructions}],
            "check": {"images": 5, "top1_equal": 5, "bit_identical": 5, "max_confidence_difference": 5.96e-8}}


def entries():
    return [
        {"board": load_board("rt1060"), "skipped": {},
         "size": {"text": 140_000, "data": 104, "bss": 90_000, "flash": 140_104, "sram": 90_104, "stack": 8192},
         "bundle": {"CONSTANT_MEM_SIZE": 123_840, "MUTABLE_MEM_SIZE": 12_352, "ACTIVATIONS_MEM_SIZE": 65_536},
         "emulator": emulator_summary(29_696_256)},
        {"board": load_board("rt685_hifi4"), "size": None, "bundle": None, "emulator": None,
         "skipped": {"firmware": "skipped: no Xtensa toolchain for rt685_hifi4 (set XTENSA_TOOLS ...)",
                     "zephyr": "ZEPHYR_BASE is not set"}},
    ]


def row(text: str, name: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {name}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_rt1060_table_has_ours_beside_the_app_notes(tmp_path):
    text = report.render_report(network="cifar", backend="builtin", macs=MACS, entries=entries(), accuracy={})
    rt1060 = text.split("## i.MX RT1060")[1].split("## ")[0]
    assert row(rt1060, "Flash (text + data)")[1:] == ["140,104 B", "157,460 B"]
    assert row(rt1060, "SRAM (data + bss")[1:] == ["90,104 B", "211,532 B"]
    assert row(rt1060, "Top-1 on the test image")[1:] == ["7 (horse)", "7 (horse)"]
    assert row(rt1060, "Confidence on the test image")[1:] == ["0.987", "0.999"]
    assert row(rt1060, "Instructions per MAC")[1] == f"{29_696_256 / MACS:.3f}" == "1.500"
    assert row(rt1060, "Instructions ÷ 600 MHz")[1:] == [f"{29_696_256 / 600e6 * 1e3:.1f} ms",
                                                         "56 ms (measured on the EVK)"]
    assert "bit-identical on 5" in rt1060
    assert "Top1 class = 7 (horse)\nConfidence = 0.999\nInference time = 56 (ms)" in text


def test_skipped_board_shows_reasons_and_no_figures():
    text = report.render_report(network="cifar", backend="builtin", macs=MACS, entries=entries(), accuracy={})
    hifi4 = text.split("(`rt685_hifi4`)")[1]
    assert row(hifi4, "Flash (text + data)")[1] == "—"
    assert row(hifi4, "Instructions ÷ 594 MHz")[2] == "15 ms (measured on the EVK)"
    assert "- firmware: skipped: no Xtensa toolchain for rt685_hifi4" in hifi4
    assert "- zephyr: skipped: ZEPHYR_BASE is not set" in hifi4


def test_accuracy_files_are_read_and_every_number_shown(tmp_path):
    (tmp_path / "accuracy.json").write_text(json.dumps(
        {"images": 10000, "float_accuracy": 0.8712, "int8_accuracy": 0.8698, "note": "text is left out"}))
    out = report.write_report(tmp_path / "report.md", network="cifar", backend="builtin", macs=MACS,
                              entries=entries(), accuracy_files={"deployed (host bundle)": tmp_path / "accuracy.json"})
    text = out.read_text()
    assert "| deployed (host bundle) | float_accuracy | 0.8712 |" in text
    assert "| deployed (host bundle) | int8_accuracy | 0.8698 |" in text
    assert "| deployed (host bundle) | images | 10000 |" in text
    assert "text is left out" not in text


def test_bad_accuracy_file_is_named(tmp_path):
    (tmp_path / "accuracy.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"accuracy\.json: not valid JSON"):
        report.write_report(tmp_path / "report.md", network="cifar", backend="builtin", macs=MACS,
                            entries=entries(), accuracy_files={"x": tmp_path / "accuracy.json"})
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        report.read_json(tmp_path / "missing.json")
    assert not (tmp_path / "report.md").exists()


def test_board_entry_reads_the_bundle_header_and_emulator_json(tmp_path):
    (tmp_path / "cifar.h").write_text("#define CIFAR_input 0\n#define CIFAR_CONSTANT_MEM_SIZE 123840\n"
                                      "#define OTHER_MACRO 3\n")
    (tmp_path / "emulator.json").write_text(json.dumps(emulator_summary(1000)))
    entry = report.board_entry(load_board("rt685_m33"), "cifar", header=tmp_path / "cifar.h",
                               emulator_json=tmp_path / "emulator.json", skipped={"mcux_sdk": "MCUX_SDK_ROOT unset"})
    assert entry["bundle"] == {"input": 0, "CONSTANT_MEM_SIZE": 123840}
    assert entry["emulator"]["instructions_per_inference"] == 1000
    assert entry["size"] is None and entry["skipped"] == {"mcux_sdk": "MCUX_SDK_ROOT unset"}
