"""build/report.md and build/report.html: our figures beside the app note's, every number of the summary equal
to the artifact it comes from (read here independently: JSON, the board files, readelf on the ELF), the page
self-contained with every picture an embedded PNG that decodes and is not blank, skipped steps with their reasons,
and bad inputs named."""
import base64
import io
import json
import re
import subprocess
import tomllib
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pipeline.core.config import TRAINING_PRESETS, load_board
from pipeline.core.layout import TRAINING_CURVES
from pipeline.delivery import plots, report

MACS = 19_797_504
ARM_BOARDS = ("rt1060", "rt685_m33")
ACCURACY = {"split": "test", "images": 10000, "float_accuracy": 0.8712, "int8_untuned_accuracy": 0.8690,
            "int8_untuned_minus_float_points": -0.22, "int8_tuned_accuracy": 0.8698,
            "int8_tuned_minus_float_points": -0.14}


def emulator_summary(instructions: int, top1: int = 7, label: str = "horse", confidence: float = 0.9871):
    return {"machine": "mps2-an500", "icount_shift": 0, "instructions_per_tick": 40.0,
            "instructions_per_inference": instructions,
            "images": [{"image": 0, "top1": top1, "label": label, "confidence": confidence, "cycles": 1,
                        "instructions": instructions}],
            "check": {"images": 5, "top1_equal": 5, "bit_identical": 5, "max_confidence_difference": 5.96e-8}}


def entries():
    return [
        {"board": load_board("rt1060"), "skipped": {}, "memory": None, "layers": None, "vendor": {},
         "size": {"text": 140_000, "data": 104, "bss": 90_000, "flash": 140_104, "sram": 90_104, "stack": 8192},
         "bundle": {"CONSTANT_MEM_SIZE": 123_840, "MUTABLE_MEM_SIZE": 12_352, "ACTIVATIONS_MEM_SIZE": 65_536},
         "emulator": emulator_summary(29_696_256)},
        {"board": load_board("rt685_hifi4"), "size": None, "bundle": None, "emulator": None, "memory": None,
         "layers": None, "vendor": {},
         "skipped": {"firmware": "skipped: no Xtensa toolchain for rt685_hifi4 (set XTENSA_TOOLS ...)",
                     "zephyr": "ZEPHYR_BASE is not set"}},
    ]


def render(board_entries=None) -> str:
    return report.render_report(network="cifar", backend="builtin", macs=MACS, entries=board_entries or entries(),
                                accuracy=ACCURACY, model=[], evaluations=[], provenance=[])


def row(text: str, name: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {name}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_rt1060_table_has_ours_beside_the_app_notes():
    text = render()
    rt1060 = text.split("## i.MX RT1060")[1].split("## ")[0]
    assert row(rt1060, "Flash (text + data)")[1:] == ["140,104 B", "157,460 B"]
    assert row(rt1060, "SRAM (data + bss")[1:] == ["90,104 B", "211,532 B"]
    assert row(rt1060, "Top-1 on the test image")[1:] == ["7 (horse)", "7 (horse)"]
    assert row(rt1060, "Confidence on the test image")[1:] == ["0.987", "0.999"]
    assert row(rt1060, "Instructions per MAC")[1] == f"{29_696_256 / MACS:.3f}" == "1.500"
    assert row(rt1060, "Instructions ÷ 600 MHz")[1:] == [f"{29_696_256 / 600e6 * 1e3:.1f} ms",
                                                         "56 ms (measured on the EVK)"]
    assert "bit-identical on 5" in rt1060
    assert "measured for the whole inference (29,696,256)" in rt1060
    assert "Top1 class = 7 (horse)\nConfidence = 0.999\nInference time = 56 (ms)" in text


def test_summary_comes_first_with_accuracy_boards_and_every_skip():
    text = render()
    summary = text.split("## Summary")[1].split("\n## ")[0]
    assert text.index("## Summary") < text.index("## i.MX RT1060")
    assert row(summary, "Test accuracy, float")[1] == "87.12%"
    assert row(summary, "Test accuracy, deployed int8")[1] == "86.98%"  # int8_tuned: what the bundles deploy
    assert row(summary, "rt1060: flash")[1:] == ["140,104 B", "157,460 B"]
    assert row(summary, "rt1060: ms at 600 MHz")[1:] == ["49.5 ms", "56 ms (measured on the EVK)"]
    assert row(summary, "rt685_hifi4: instructions per inference")[1] == "—"
    assert "- rt685_hifi4 firmware: skipped: no Xtensa toolchain" in summary
    assert "- rt685_hifi4 zephyr: skipped: ZEPHYR_BASE is not set" in summary


def test_skipped_board_shows_reasons_and_no_figures():
    hifi4 = render().split("(`rt685_hifi4`)")[1]
    assert row(hifi4, "Flash (text + data)")[1] == "—"
    assert row(hifi4, "Instructions ÷ 594 MHz")[2] == "15 ms (measured on the EVK)"
    assert "- firmware: skipped: no Xtensa toolchain for rt685_hifi4" in hifi4
    assert "- zephyr: skipped: ZEPHYR_BASE is not set" in hifi4


def test_per_layer_rows_come_from_emulator_json_when_present(tmp_path):
    layers = [{"name": "conv1", "kind": "conv", "macs": 884_736, "instructions": 1_327_104},
              {"name": "fc", "kind": "fully_connected", "macs": 20_480, "instructions": 40_000}]
    (tmp_path / "emulator.json").write_text(json.dumps({**emulator_summary(1_400_000), "layers": layers}))
    entry = report.board_entry(load_board("rt1060"), "cifar", emulator_json=tmp_path / "emulator.json")
    assert entry["layers"] == layers
    section = report.board_section(entry, MACS, {"layers": "report_figures/layers_rt1060.png"})
    assert row(section, "conv1")[1:] == ["conv", "884,736", "1,327,104", "1.500"]
    assert row(section, "fc")[1:] == ["fully_connected", "20,480", "40,000", "1.953"]
    assert "![Instructions per layer, rt1060](report_figures/layers_rt1060.png)" in section
    assert "whole inference" not in section

    del layers[1]["instructions"]
    (tmp_path / "emulator.json").write_text(json.dumps({**emulator_summary(1), "layers": layers}))
    with pytest.raises(ValueError, match=r"emulator\.json: layers\[1\] lacks \['instructions'\]"):
        report.board_entry(load_board("rt1060"), "cifar", emulator_json=tmp_path / "emulator.json")


def test_recipe_in_words_follows_the_preset():
    recipe = {**TRAINING_PRESETS["default"], "channels": [32, 32, 64, 128], "seed": 0, "threads": 2,
              "init_from": "", "preset": "default", "precision_used": "bf16"}
    words = report.recipe_words({"recipe": recipe, "train_images": 48_500, "test_accuracy": 0.8407,
                                 "test_images": 10_000})
    assert f"teacher's soft targets (weight {recipe['distillation']:g}" in words
    assert "convolutions in bfloat16" in words
    fallback = report.recipe_words({"recipe": {**recipe, "precision_used": "fp32"}, "train_images": 48_500,
                                    "test_accuracy": 0.8407, "test_images": 10_000})
    assert "float32 throughout (bf16 asked for; this CPU has none)" in fallback
    assert f"SGD with Nesterov momentum 0.9, one-cycle schedule peaking at learning rate {recipe['lr']:g}" in words
    assert f"batch {recipe['batch_size']}, {recipe['epochs']} epochs" in words
    assert f"weight decay {recipe['weight_decay']:g} on the conv and linear weights" in words
    assert f"{recipe['crop_padding']}-pixel crop" in words and f"moving average (decay {recipe['ema_decay']:g})" in words
    assert "48,500 training images" in words and "84.07%" in words
    assert "random flips and 2-pixel crop" in words and "PyTorch's initialisation" in words
    options = report.recipe_words({"recipe": {**recipe, "flip": "alternating", "whitening_init": True},
                                   "train_images": 48_500, "test_accuracy": 0.8407, "test_images": 10_000})
    assert "alternating flips and 2-pixel crop" in options and "starts as a whitening" in options
    note = report.recipe_words({"recipe": {**recipe, **TRAINING_PRESETS["an13331"]}, "train_images": 48_500,
                                "test_accuracy": 0.76, "test_images": 10_000})
    assert "no augmentation" in note and "flips" not in note
    assert "PyTorch's initialisation" in note and "whitening" not in note


def test_bad_json_and_unknown_evaluations_are_named(tmp_path):
    (tmp_path / "accuracy.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"accuracy\.json: not valid JSON"):
        report.read_json(tmp_path / "accuracy.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.json does not exist"):
        report.read_json(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"unknown \['speed'\]"):
        report.evaluations_section({"speed": {}}, {})


def test_board_entry_reads_the_bundle_header_and_emulator_json(tmp_path):
    (tmp_path / "cifar.h").write_text("#define CIFAR_input 0\n#define CIFAR_CONSTANT_MEM_SIZE 123840\n"
                                      "#define OTHER_MACRO 3\n")
    (tmp_path / "emulator.json").write_text(json.dumps(emulator_summary(1000)))
    entry = report.board_entry(load_board("rt685_m33"), "cifar", header=tmp_path / "cifar.h",
                               emulator_json=tmp_path / "emulator.json", skipped={"mcux_sdk": "MCUX_SDK_ROOT unset"})
    assert entry["bundle"] == {"input": 0, "CONSTANT_MEM_SIZE": 123840}
    assert entry["emulator"]["instructions_per_inference"] == 1000 and entry["layers"] is None
    assert entry["size"] is None and entry["skipped"] == {"mcux_sdk": "MCUX_SDK_ROOT unset"}


def test_plots_are_byte_identical_when_redrawn(tmp_path):
    regions = [{"name": "itcm", "size": 131_072, "segments": {"code": 20_000, "free": 111_072}},
               {"name": "dtcm", "size": 131_072, "segments": {"data": 12_000, "stack": 8192, "free": 110_880}}]
    matrix = np.arange(100).reshape(10, 10)
    for name in ("first", "second"):
        plots.memory_map_plot(regions, tmp_path / f"{name}_memory.png", "memory")
        plots.confusion_matrix_plot(matrix, [f"c{i}" for i in range(10)], tmp_path / f"{name}_confusion.png", "cm")
        plots.bar_plot(["conv1", "conv2", "fc"], [1_300_000, 9_000_000, 40_000], tmp_path / f"{name}_layers.png",
                       title="layers", xlabel="instructions")
    for kind in ("memory", "confusion", "layers"):
        assert (tmp_path / f"first_{kind}.png").read_bytes() == (tmp_path / f"second_{kind}.png").read_bytes()
        assert_not_blank((tmp_path / f"first_{kind}.png").read_bytes())


# ---- the smoke build's report, checked against its artifacts ------------------------------------------------

class Page(HTMLParser):
    """The parts of the page the tests check: headings, images, table rows (cell texts), scripts, links."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.images, self.rows, self.tags = [], [], [], set()
        self.section_rows: dict[str, list] = {}  # h2 title: the table rows under it
        self._heading = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._heading = [tag, ""]
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "tr":
            self.rows.append([])
            if self.section_rows:
                list(self.section_rows.values())[-1].append(self.rows[-1])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3") and self._heading:
            self.headings.append(tuple(self._heading))
            if tag == "h2":
                self.section_rows[self._heading[1]] = []
            self._heading = None
        elif tag in ("td", "th"):
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading[1] += data
        if self._cell is not None:
            self._cell += data

    def row(self, first_cell: str, section: str = "") -> list[str]:
        """The first table row starting with `first_cell`, under the first h2 starting with `section`."""
        rows = next(rows for title, rows in self.section_rows.items() if title.startswith(section))
        return next(r for r in rows if r and r[0] == first_cell)


def assert_not_blank(png: bytes) -> None:
    image = Image.open(io.BytesIO(png))
    image.verify()  # a complete, valid PNG
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.002, "a blank picture"


@pytest.fixture(scope="module")
def page(smoke_build) -> Page:
    return Page((smoke_build / "build" / "report.html").read_text(encoding="utf-8"))


def test_page_is_self_contained_and_every_picture_decodes(smoke_build, page):
    html = (smoke_build / "build" / "report.html").read_text(encoding="utf-8")
    assert "script" not in page.tags and "link" not in page.tags
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page reaches out to the network"
    assert len(page.images) >= 6  # training, confusion, two memory maps, hardening, robustness
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix), f"picture {image.get('alt')} is not an embedded PNG"
        assert_not_blank(base64.b64decode(image["src"][len(prefix):]))


def test_every_section_is_present_in_both_files(smoke_build, page):
    markdown = (smoke_build / "build" / "report.md").read_text(encoding="utf-8")
    h2 = [text for tag, text in page.headings if tag == "h2"]
    expected = ["Summary", "Model", *(load_board(b)["description"] for b in ("rt1060", "rt685_m33", "rt685_hifi4")),
                "Hardening, robustness, parity", "Provenance"]
    for title in expected:
        assert any(h.startswith(title) for h in h2), f"section {title!r} missing from report.html: {h2}"
    assert h2 == re.findall(r"^## (.*)$", markdown.replace("`", ""), flags=re.MULTILINE)
    h3 = [text for tag, text in page.headings if tag == "h3"]
    assert h3 == ["Confidence hardening", "Input-transformation voting and FGSM", "Engine parity",
                  "The same int8 model in TensorFlow Lite"]
    # the Markdown links the very pictures the page embeds
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    embedded = [base64.b64decode(image["src"].split(",", 1)[1]) for image in page.images]
    assert embedded == [(smoke_build / "build" / link).read_bytes() for link in links]


def readelf_sections(elf) -> list[dict]:
    """Allocated sections of an ELF from binutils readelf (independent of the report's arm-none-eabi-size)."""
    out = subprocess.run(["readelf", "-S", "-W", str(elf)], check=True, capture_output=True, text=True).stdout
    sections = []
    for line in out.splitlines():
        match = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]{8})\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)",
                         line)
        if match and "A" in match[5]:
            sections.append({"name": match[1], "type": match[2], "addr": int(match[3], 16),
                             "size": int(match[4], 16), "write": "W" in match[5]})
    assert sections, f"readelf found no allocated section in {elf}"
    return sections


def bytes_cell(value: int) -> str:
    return f"{value:,} B"


def test_summary_numbers_equal_their_artifacts(smoke_build, page):
    build = smoke_build / "build"
    accuracy = json.loads((build / "quant" / "accuracy.json").read_text())
    images = accuracy["images"]
    assert page.row(f"Test accuracy, float (ONNX Runtime, {images:,} images)")[1] == \
        f"{accuracy['float_accuracy']:.2%}"
    assert page.row("Test accuracy, deployed int8 (host-compiled bundle)")[1] == \
        f"{accuracy['int8_tuned_accuracy']:.2%}"
    for name in ARM_BOARDS:
        board = tomllib.loads((ROOT / "boards" / f"{name}.toml").read_text())
        sections = readelf_sections(build / name / "firmware.elf")
        loaded = [s for s in sections if s["type"] != "NOBITS"]
        flash = sum(s["size"] for s in loaded)  # code, read-only data and the initial values of .data
        sram = sum(s["size"] for s in sections if s["write"])  # .data, .bss, activations, stack
        emulator = json.loads((build / name / "emulator.json").read_text())
        instructions = emulator["instructions_per_inference"]
        published = {"rt1060": ["157,460 B", "211,532 B", "56 ms (measured on the EVK)"],
                     "rt685_m33": ["—", "—", "205 ms (measured on the EVK)"]}[name]
        assert page.row(f"{name}: flash (text + data)")[1:] == [bytes_cell(flash), published[0]]
        assert page.row(f"{name}: SRAM (data + bss)")[1:] == [bytes_cell(sram), published[1]]
        assert page.row(f"{name}: instructions per inference")[1] == f"{instructions:,}"
        mhz = board["cpu_hz"] / 1e6
        assert page.row(f"{name}: ms at {mhz:g} MHz (1 instruction per cycle)")[1:] == \
            [f"{instructions / board['cpu_hz'] * 1e3:.1f} ms", published[2]]


def test_memory_map_accounts_for_every_allocated_section(smoke_build, page):
    build = smoke_build / "build"
    for name in ARM_BOARDS:
        board = tomllib.loads((ROOT / "boards" / f"{name}.toml").read_text())
        sections = readelf_sections(build / name / "firmware.elf")
        title = load_board(name)["description"]
        header = page.row("Region", title)
        assert header == ["Region", "code", "weights", "data", "activations", "stack", "free", "size"]
        for region, span in board["memory"].items():
            inside = [s for s in sections if span["origin"] <= s["addr"] < span["origin"] + span["length"]]
            used = sum(s["size"] for s in inside)
            cells = dict(zip(header, page.row(region, title)))
            numbers = {k: int(v.removesuffix(" B").replace(",", "")) for k, v in cells.items() if k != "Region"}
            assert numbers["size"] == span["length"]
            assert sum(v for k, v in numbers.items() if k not in ("free", "size")) == used
            assert numbers["free"] == span["length"] - used
            weights = sum(s["size"] for s in inside if s["name"] == ".nn_weights")
            assert numbers["weights"] == weights
            stack = board["firmware"]["stack_size"] if board["firmware"]["placement"]["stack"] == region else 0
            assert numbers["stack"] == stack


def test_confusion_matrix_agrees_with_the_measured_int8_accuracy(smoke_build, page):
    """The per-class rows (from the int8 predictions on the test split) give back accuracy.json's int8 figure,
    which the accuracy step measured on its own run of the host-compiled bundle."""
    build = smoke_build / "build"
    accuracy = json.loads((build / "quant" / "accuracy.json").read_text())
    classes = json.loads((build / "data" / "classes.json").read_text())
    rows = [page.row(cls, "Model") for cls in classes]
    images = [int(r[1].replace(",", "")) for r in rows]
    correct = sum(n * float(r[2].rstrip("%")) / 100 for n, r in zip(images, rows))
    assert sum(images) == accuracy["images"]
    assert correct / sum(images) == pytest.approx(accuracy["int8_tuned_accuracy"], abs=1e-4)


def test_vendor_build_sizes_are_read_from_their_elf(smoke_build):
    """A vendor build's ELF (here the bare-metal one stands in for it) gets its own flash and SRAM row."""
    elf = smoke_build / "build" / "rt1060" / "firmware.elf"
    entry = report.board_entry(load_board("rt1060"), "cifar", vendor_elfs={"zephyr": elf})
    sections = readelf_sections(elf)
    flash = sum(s["size"] for s in sections if s["type"] != "NOBITS")
    sram = sum(s["size"] for s in sections if s["write"])
    assert row(report.board_section(entry, MACS), "zephyr")[1:] == [bytes_cell(flash), bytes_cell(sram)]


def test_training_cost_is_the_benchmarks_measurement(smoke_build):
    markdown = (smoke_build / "build" / "report.md").read_text(encoding="utf-8")
    curves = json.loads((ROOT / TRAINING_CURVES).read_text())
    assert set(curves["curves"]) == {"default", "an13331"}
    for name, runs in curves["curves"].items():
        assert f"`{name}` {runs[-1]['test_accuracy']:.2%} after {runs[-1]['seconds'] / 60:.1f} min" in markdown
    assert "![Test accuracy vs training time](report_figures/accuracy_time.png)" in markdown
