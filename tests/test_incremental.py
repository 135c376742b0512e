"""doit's incremental behaviour on a real smoke build: only stale steps run, and every stale step does."""
import json
import shutil

import pytest

from conftest import executed, run_doit
from pipeline.int8.bundle import header_macros

SMOKE = "config=configs/smoke.toml"


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_second_run_executes_nothing(smoke_copy):
    tree, env = smoke_copy
    assert executed(run_doit(tree, SMOKE, env=env)) == set()


def test_training_key_reruns_training_and_what_follows(smoke_copy):
    tree, env = smoke_copy
    edit(tree / "configs" / "smoke.toml", "epochs = 1", "epochs = 1\nlr = 0.002")
    ran = executed(run_doit(tree, SMOKE, "export", env=env))  # export and what it needs, not the whole graph
    assert {"train", "export"} <= ran
    assert "dataset" not in ran


def test_export_key_does_not_retrain(smoke_copy):
    tree, env = smoke_copy
    edit(tree / "configs" / "smoke.toml", "verify_images = 20", "verify_images = 10")
    ran = executed(run_doit(tree, SMOKE, env=env))
    assert "export" in ran
    assert not {"dataset", "train"} & ran


def test_editing_a_stage_reruns_it_and_identical_output_stops_there(smoke_copy):
    tree, env = smoke_copy
    before = (tree / "build" / "model" / "cifar.pth").read_bytes()
    edit(tree / "pipeline" / "model" / "train.py", '"""Training stage',
         '# an edit that changes no behaviour\n"""Training stage')
    ran = executed(run_doit(tree, SMOKE, env=env))
    assert "train" in ran, "editing a stage's own source reruns it"
    assert (tree / "build" / "model" / "cifar.pth").read_bytes() == before
    assert "export" not in ran, "a byte-identical .pth must not rerun its dependents"


def test_calibration_count_reruns_quantization_but_not_training(smoke_copy):
    tree, env = smoke_copy
    edit(tree / "configs" / "smoke.toml", "[export]", "[quantization]\ncalibration_per_class = 2\n\n[export]")
    ran = executed(run_doit(tree, SMOKE, "bundle", env=env))
    assert {"profile", "tune", "bundle:rt1060", "bundle:rt685_m33", "bundle:rt685_hifi4"} <= ran
    assert not {"dataset", "train", "export"} & ran


def test_board_flags_rebuild_only_that_boards_bundle(smoke_copy):
    tree, env = smoke_copy
    edit(tree / "boards" / "rt1060.toml", '"-mfloat-abi=hard"]', '"-mfloat-abi=hard", "-fno-common"]')
    ran = executed(run_doit(tree, SMOKE, env=env))
    assert "bundle:rt1060" in ran
    assert not {"bundle:rt685_m33", "bundle:rt685_hifi4", "profile", "tune", "train"} & ran


def test_main_c_template_rebuilds_main_c_elfs_and_runs_only(smoke_copy):
    tree, env = smoke_copy
    edit(tree / "mcux_app" / "main.c.j2", "#include", "/* an edited template */\n#include")
    ran = executed(run_doit(tree, SMOKE, env=env))
    assert {"main_c:rt1060", "firmware:rt1060", "emulate:rt1060", "main_c:rt685_m33", "firmware:rt685_m33",
            "emulate:rt685_m33"} <= ran
    assert not {"dataset", "train", "export", "profile", "tune", "bundle:rt1060", "bundle:rt685_m33"} & ran
    assert "an edited template" in (tree / "build" / "rt1060" / "source" / "main.c").read_text()


@pytest.fixture
def warm_smoke_copy(smoke_copy, smoke_build_cache):
    """smoke_copy with a private copy of the step cache the smoke build filled (train and tune entries)."""
    tree, env = smoke_copy
    shutil.copytree(smoke_build_cache, env["PIPELINE_CACHE_DIR"])
    return tree, env


def test_editing_evaluation_code_reruns_the_steps_that_compute_with_it(smoke_copy):
    # softmax is what the emulator check compares the firmware against; onnxruntime_logits feeds accuracy
    tree, env = smoke_copy
    edit(tree / "pipeline" / "model" / "evaluation.py", "def softmax", "# a new comment\ndef softmax")
    ran = executed(run_doit(tree, SMOKE, "accuracy", "emulate", "hardening", "robustness", "parity", env=env))
    assert {"accuracy", "emulate:rt1060", "emulate:rt685_m33", "hardening", "robustness", "parity"} <= ran
    assert "dataset" not in ran


def test_changing_the_preprocessing_misses_the_tune_and_train_cache(warm_smoke_copy):
    tree, env = warm_smoke_copy
    run_doit(tree, "forget", SMOKE, "train", "tune", env=env)
    restored = run_doit(tree, SMOKE, "train", "tune", env=env)
    assert "train: cache hit" in restored.stdout and "tune: cache hit" in restored.stdout
    edit(tree / "pipeline" / "model" / "shapes.py", "def to_input", "# a new comment\ndef to_input")
    rerun = run_doit(tree, SMOKE, "train", "tune", env=env)
    assert "train: cache miss" in rerun.stdout and "tune: cache miss" in rerun.stdout


def test_project_name_builds_end_to_end(warm_smoke_copy):
    tree, env = warm_smoke_copy
    edit(tree / "configs" / "smoke.toml", "[dataset]", '[project]\nname = "mynet"\n\n[dataset]')
    result = run_doit(tree, SMOKE, env=env)
    assert "train: cache hit" in result.stdout, "the model's content does not depend on its file name"
    build = tree / "build"
    assert (build / "model" / "mynet.pth").is_file() and (build / "model" / "mynet.onnx").is_file()
    for board in ("rt1060", "rt685_m33"):
        macros = header_macros(build / board / "bundle" / "mynet.h")
        assert "MYNET_input" in macros and "MYNET_output" in macros
        assert (build / board / "bundle" / "mynet.o").read_bytes().startswith(b"\x7fELF")
        assert "MYNET_input" in (build / board / "source" / "main.c").read_text()
        emulated = json.loads((build / board / "emulator.json").read_text())
        assert emulated["check"]["top1_equal"] == emulated["check"]["images"]
    assert json.loads((build / "quant" / "accuracy.json").read_text())["images"] > 0
    assert "mynet" in (build / "report.md").read_text()


@pytest.mark.parametrize("name", ["my-net", "int", "", "9lives", "CamelCase"])
def test_project_names_c_or_the_file_system_cannot_take_are_refused_at_load(smoke_copy, name):
    tree, env = smoke_copy
    edit(tree / "configs" / "smoke.toml", "[dataset]", f'[project]\nname = "{name}"\n\n[dataset]')
    result = run_doit(tree, SMOKE, env=env, check=False)
    assert result.returncode != 0 and executed(result) == set()
    assert f"project.name = {name!r}" in result.stderr and "letters, digits or underscores" in result.stderr


def test_distillation_trains_the_teacher_first_and_a_changed_teacher_retrains_the_student(smoke_copy):
    tree, env = smoke_copy
    config = tree / "configs" / "smoke.toml"
    edit(config, "epochs = 1", "epochs = 1\ndistillation = 0.5")
    edit(config, "channels = [16, 32]\nepochs = 2", "channels = [8, 16]\nepochs = 1")  # the smoke [teacher]
    ran = executed(run_doit(tree, SMOKE, "export", env=env))
    assert {"teacher", "train", "export"} <= ran and "dataset" not in ran
    model = tree / "build" / "model"
    assert json.loads((model / "metrics.json").read_text())["recipe"]["distillation"] == 0.5
    assert json.loads((model / "teacher" / "metrics.json").read_text())["recipe"]["channels"] == [8, 16]
    student = (model / "cifar.pth").read_bytes()

    edit(config, "channels = [8, 16]", "channels = [8, 12]")
    ran = executed(run_doit(tree, SMOKE, "export", env=env))
    assert {"teacher", "train"} <= ran, "new soft targets retrain the student"
    assert (model / "cifar.pth").read_bytes() != student
