"""doit's incremental behaviour on a real smoke build: only stale steps run."""
from conftest import executed, run_doit

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
    ran = executed(run_doit(tree, SMOKE, env=env))
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
    edit(tree / "pipeline" / "train.py", '"""Training stage', '# an edit that changes no behaviour\n"""Training stage')
    ran = executed(run_doit(tree, SMOKE, env=env))
    assert "train" in ran, "editing a stage's own source reruns it"
    assert (tree / "build" / "model" / "cifar.pth").read_bytes() == before
    assert "export" not in ran, "a byte-identical .pth must not rerun its dependents"


def test_calibration_count_reruns_quantization_but_not_training(smoke_copy):
    tree, env = smoke_copy
    edit(tree / "configs" / "smoke.toml", "[export]", "[quantization]\ncalibration_per_class = 2\n\n[export]")
    ran = executed(run_doit(tree, SMOKE, env=env))
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
