import copy
import json

import numpy as np
import pytest
import torch

from pipeline.core import config
from pipeline.model import dataset, distill, numerics
from pipeline.model import train
from pipeline.model.evaluation import ModelFileError, load_model
from pipeline.model.network import CifarNet, ConvBlock
from pipeline.model.shapes import to_input

RECIPE = dict(config.TRAINING_PRESETS["an13331"], epochs=3)
# The default preset's choices (bf16, augmentation, weight average) without the teacher.
LABELS_ONLY = dict(config.TRAINING_PRESETS["default"], distillation=0.0)


@pytest.fixture(scope="module")
def data_dir(small_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    dataset.build_dataset(str(small_dataset_dir), out, root=out, validation_per_class=20, train_per_class=30,
                          test_per_class=10)
    return out


def run(data_dir, out, **overrides):
    return train.train(data_dir, out / "cifar.pth", channels=[8, 8, 16, 16], **{**RECIPE, **overrides}, progress=False)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return out, run(data_dir, out)


def test_training_learns_and_records_every_epoch(reference):
    out, metrics = reference
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert metrics["test_accuracy"] > 0.5, "synthetic classes are easy: well above the 10% of chance"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "training.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "checkpoint.pt").exists()


def test_same_inputs_give_a_bit_identical_pth(reference, data_dir, tmp_path):
    run(data_dir, tmp_path)
    assert (tmp_path / "cifar.pth").read_bytes() == (reference[0] / "cifar.pth").read_bytes()


def interrupt_in_epoch_two_then_resume(data_dir, out, monkeypatch, **overrides) -> dict:
    calls = []
    real_evaluate = train.evaluate

    def interrupt_in_epoch_two(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args)

    monkeypatch.setattr(train, "evaluate", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, out, **overrides)
    assert not (out / "cifar.pth").exists(), "an interrupted run leaves no model behind"
    assert (out / "checkpoint.pt").exists()
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    return run(data_dir, out, **overrides)


def test_interrupted_training_resumes_to_the_same_result(reference, data_dir, tmp_path, monkeypatch):
    metrics = interrupt_in_epoch_two_then_resume(data_dir, tmp_path, monkeypatch)
    assert (tmp_path / "cifar.pth").read_bytes() == (reference[0] / "cifar.pth").read_bytes()
    assert metrics["epochs"] == reference[1]["epochs"]


def test_default_recipe_resumes_with_its_weight_average(data_dir, tmp_path, monkeypatch):
    """The default recipe's crop augmentation and weight average survive an interruption bit for bit, and the
    saved weights are the average, not the last step's."""
    recipe = dict(LABELS_ONLY, epochs=3, ema_decay=0.9)
    whole = run(data_dir, tmp_path / "whole", **recipe)
    resumed = interrupt_in_epoch_two_then_resume(data_dir, tmp_path / "resumed", monkeypatch, **recipe)
    assert (tmp_path / "resumed" / "cifar.pth").read_bytes() == (tmp_path / "whole" / "cifar.pth").read_bytes()
    assert resumed["epochs"] == whole["epochs"]
    last_weights = run(data_dir, tmp_path / "last", **{**recipe, "ema_decay": 0.0})
    averaged, last = (torch.load(tmp_path / name / "cifar.pth") for name in ("whole", "last"))
    assert last_weights["epochs"][0]["train_loss"] == whole["epochs"][0]["train_loss"], "same steps either way"
    assert not torch.equal(averaged["classifier.weight"], last["classifier.weight"])


def test_crop_augmentation_shifts_by_at_most_the_padding():
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(1, 3, 32, 32).repeat(64, 1, 1, 1)
    out = train.augment_batch(image, torch.Generator().manual_seed(0), crop_padding=2)
    assert out.shape == image.shape
    centre = image[0, :, 2:30, 2:30]
    offsets = []
    for crop in out:  # each crop is the image, maybe flipped, moved by at most 2 pixels each way
        found = [(dy, dx, flip) for flip in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal((crop.flip(2) if flip else crop)[:, 2 + dy:30 + dy, 2 + dx:30 + dx], centre)]
        assert len(found) == 1
        offsets += found
    assert len(set(offsets)) > 10 and any(flip for _, _, flip in offsets) and not all(flip for _, _, flip in offsets)


@pytest.mark.parametrize("flip", ["alternating", "random"])
def test_alternating_flips_show_every_image_both_ways_in_two_epochs(data_dir, tmp_path, monkeypatch, flip):
    """What the training loop really fed the network: with flip = "alternating" each image is mirrored in exactly
    one of two epochs in a row; random flips (the other case) repeat a view for some images."""
    seen = {}  # image bytes -> [mirrored in epoch 1, in epoch 2]
    real_augment = train.augment_batch

    def record(x, gen, crop_padding, flips=None):
        out = real_augment(x, gen, crop_padding, flips)
        for image, augmented in zip(x, out):
            seen.setdefault(image.numpy().tobytes(), []).append(
                not torch.equal(augmented, image) and torch.equal(augmented, image.flip(2)))
        return out

    monkeypatch.setattr(train, "augment_batch", record)
    run(data_dir, tmp_path, **dict(LABELS_ONLY, epochs=2, crop_padding=0, flip=flip))
    assert len(seen) > 250 and all(len(views) == 2 for views in seen.values())
    both_ways = sum(views[0] != views[1] for views in seen.values())
    if flip == "alternating":
        assert both_ways == len(seen)
        assert 0.3 < np.mean([views[0] for views in seen.values()]) < 0.7, "half mirrored first, at random"
    else:
        assert both_ways < 0.7 * len(seen)


def test_whitening_init_decorrelates_the_first_convolutions_responses(data_dir):
    """After whitening_init, the first convolution's own outputs on the training images' patches (interior
    pixels: no padding) are uncorrelated across filters, strongest first with variance at most one (eps damps the
    faintest directions), and come in negated pairs."""
    images, _ = dataset.load_split(data_dir, "train")
    inputs = torch.from_numpy(to_input(images))
    model = CifarNet((32, 32, 64, 128))
    train.whiten_first_conv(model, inputs, stride=1)
    conv = model.features[0][0]
    with torch.no_grad():
        responses = conv(inputs)[:, :, 1:-1, 1:-1].permute(1, 0, 2, 3).reshape(32, -1).double().numpy()
    np.testing.assert_allclose(responses[16:], -responses[:16], atol=1e-5)
    covariance = np.cov(responses[:16])
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() < 1e-3
    variances = np.diag(covariance)
    assert 0.9 < variances[0] < 1.0 + 1e-4 and np.all(np.diff(variances) <= 1e-6)
    torch.manual_seed(0)
    plain = CifarNet((32, 32, 64, 128)).features[0][0](inputs[:8])
    assert np.abs(np.corrcoef(plain.permute(1, 0, 2, 3).reshape(32, -1).detach().numpy())).mean() > 0.05, \
        "PyTorch's own initialisation gives correlated responses: the check above can fail"


def test_checkpoint_of_another_recipe_is_not_resumed(reference, data_dir, tmp_path, capsys):
    import shutil

    out = tmp_path
    (out / "checkpoint.pt").write_bytes(b"")
    ckpt = dict(digest="something else", epoch=2)
    torch.save(ckpt, out / "checkpoint.pt")
    run(data_dir, out)
    assert "resuming" not in capsys.readouterr().err
    assert (out / "cifar.pth").read_bytes() == (reference[0] / "cifar.pth").read_bytes()
    shutil.rmtree(out)


def test_init_from_continues_from_a_pth(reference, data_dir, tmp_path):
    metrics = run(data_dir, tmp_path, epochs=1, init_from=str(reference[0] / "cifar.pth"))
    assert metrics["epochs"][0]["train_loss"] < reference[1]["epochs"][0]["train_loss"]


def test_pth_for_another_network_is_refused(data_dir, tmp_path):
    other = tmp_path / "other.pth"
    torch.save(CifarNet((4, 4, 4, 4)).state_dict(), other)
    with pytest.raises(ModelFileError, match=r"other.pth: does not match the network"):
        run(data_dir, tmp_path / "out", init_from=str(other))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"garbage.pth: not a readable PyTorch state_dict"):
        run(data_dir, tmp_path / "out", init_from=str(garbage))


def test_weight_average_of_a_short_run_is_not_the_initial_weights(data_dir, tmp_path):
    """The average's decay ramps up: one epoch of a few steps ends near the trained weights, not the initial.
    (Pinned to PyTorch's initialisation: from whitening_init's 8 filters of 300 synthetic images, 5 steps reach
    only 30 %.)"""
    recipe = dict(LABELS_ONLY, epochs=1, whitening_init=False)
    averaged = run(data_dir, tmp_path / "average", **recipe)
    last = run(data_dir, tmp_path / "last", **{**recipe, "ema_decay": 0.0})
    assert averaged["test_accuracy"] >= last["test_accuracy"] - 0.1
    assert averaged["test_accuracy"] > 0.3, "well above the 10% of chance"


@pytest.mark.parametrize("precision", [
    "fp32", pytest.param("bf16", marks=pytest.mark.skipif(numerics.precision_used("bf16") != "bf16",
                                                            reason="this CPU has no native BF16"))])
def test_a_training_block_pools_before_its_relu_with_the_notes_exact_results(precision):
    """Training's faster order (pool, then ReLU on a quarter of the elements) against the note's order as plain
    nn.Sequential: the same outputs, gradients and BatchNorm statistics, bit for bit; evaluation keeps the
    note's order. A negative BatchNorm shift makes whole windows negative (where the note's order ties at zero)."""
    torch.manual_seed(0)
    block = ConvBlock(3, 8, pool=True).train()
    block[1].bias.data.fill_(-0.7)
    notes_order = torch.nn.Sequential(*copy.deepcopy(block))
    relu_inputs = []
    block[2].register_forward_hook(lambda module, args, out: relu_inputs.append(tuple(args[0].shape)))
    x = torch.randn(16, 3, 32, 32)
    results = []
    for net in (block, notes_order):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(leaf).float()
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append([out, leaf.grad, *(p.grad for p in net.parameters()), net[1].running_mean, net[1].running_var])
    assert relu_inputs == [(16, 8, 16, 16)], "training did not run the ReLU after the pool"
    assert (results[0][0] == 0).float().mean() > 0.2, "no negative windows: the test would miss the ReLU's gradient"
    for ours, note in zip(*results):
        assert torch.equal(ours, note)
    block.eval()(x)
    assert relu_inputs[-1] == (16, 8, 32, 32), "evaluation (and export) keep the note's order"


@pytest.mark.skipif(numerics.precision_used("bf16") != "bf16", reason="this CPU has no native BF16")
def test_bf16_training_is_bit_identical_run_to_run_and_not_float32(data_dir, tmp_path):
    recipe = dict(LABELS_ONLY, epochs=2)
    first = run(data_dir, tmp_path / "first", **recipe)
    run(data_dir, tmp_path / "second", **recipe)
    run(data_dir, tmp_path / "fp32", **{**recipe, "precision": "fp32"})
    assert first["recipe"]["precision_used"] == "bf16"
    pth = {name: (tmp_path / name / "cifar.pth").read_bytes() for name in ("first", "second", "fp32")}
    assert pth["first"] == pth["second"]
    assert pth["first"] != pth["fp32"], "bf16 autocast changed nothing: it did not take effect"


def test_a_cpu_without_bf16_trains_in_float32_and_says_so(data_dir, tmp_path, monkeypatch, capsys):
    recipe = dict(LABELS_ONLY, epochs=1)
    run(data_dir, tmp_path / "fp32", **{**recipe, "precision": "fp32"})
    assert "BF16" not in capsys.readouterr().err
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"fpu", "sse2", "avx2"}))
    metrics = run(data_dir, tmp_path / "fallback", **recipe)
    notices = [line for line in capsys.readouterr().err.splitlines() if "BF16" in line]
    assert len(notices) == 1 and "training in fp32" in notices[0] and "training.precision" in notices[0]
    assert metrics["recipe"]["precision"] == "bf16" and metrics["recipe"]["precision_used"] == "fp32"
    assert (tmp_path / "fallback" / "cifar.pth").read_bytes() == (tmp_path / "fp32" / "cifar.pth").read_bytes()


@pytest.fixture(scope="module")
def teacher(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    recipe = dict(config.TEACHER_RECIPE, epochs=2, batch_size=32)
    metrics = distill.teacher(data_dir, out, channels=[8, 16, 16], seed=0, threads=2, progress=False, **recipe)
    return out, metrics


def test_soft_targets_are_the_teachers_mean_logits_over_each_image_and_its_mirror(teacher, data_dir):
    out, metrics = teacher
    assert metrics["recipe"]["network"] == "teacher" and (out / "teacher.pth").is_file()
    stored = np.load(out / "soft_targets.npy")
    images, _ = dataset.load_split(data_dir, "train")
    assert stored.shape == (len(images), 10) and stored.dtype == np.float32
    model = load_model(out / "teacher.pth", [8, 16, 16], network="teacher")
    with torch.no_grad():  # float32, without the autocast the stage used
        x = torch.from_numpy(train.to_input(images[:40]))
        plain, mirrored = model(x).numpy(), model(x.flip(3)).numpy()
    off_mean = np.abs(stored[:40] - (plain + mirrored) / 2).max()  # bf16 rounding only
    assert off_mean < 0.05 * np.abs(plain).max()
    for one_view in (plain, mirrored):  # the mean of both, far closer than either view alone
        assert off_mean < 0.25 * np.abs(stored[:40] - one_view).max()


def test_distillation_learns_the_teachers_targets_not_the_labels(data_dir, tmp_path):
    """Soft targets that name the next class: a student trained on them alone predicts the next class."""
    _, labels = dataset.load_split(data_dir, "train")
    logits = np.where(np.eye(10, dtype=bool)[(labels + 1) % 10], 8.0, 0.0).astype(np.float32)
    np.save(tmp_path / "next_class.npy", logits)
    run(data_dir, tmp_path / "student", soft_targets=str(tmp_path / "next_class.npy"), distillation=1.0,
        distillation_temperature=1.0)
    test_x, test_y = dataset.load_split(data_dir, "test")
    predicted = train.torch_logits(load_model(tmp_path / "student" / "cifar.pth", [8, 8, 16, 16]), test_x).argmax(1)
    assert (predicted == (test_y + 1) % 10).mean() > 0.5
    assert (predicted == test_y).mean() < 0.2


def test_soft_targets_of_another_dataset_are_refused(data_dir, tmp_path):
    np.save(tmp_path / "other.npy", np.zeros((7, 10), np.float32))
    with pytest.raises(ValueError, match=r"other.npy: soft targets for 7 images, the training split has 300"):
        run(data_dir, tmp_path / "out", soft_targets=str(tmp_path / "other.npy"), distillation=0.5)
    with pytest.raises(ValueError, match=r"training.distillation > 0 needs the teacher's soft targets"):
        run(data_dir, tmp_path / "out", distillation=0.5)
    assert not (tmp_path / "out" / "cifar.pth").exists()
