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
