"""Input-transformation voting and FGSM (pipeline/robustness.py) on a tiny CifarNet trained on synthetic data."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.evaluations import robustness
from pipeline.model.evaluation import balanced_subset, torch_logits
from pipeline.model.shapes import to_input
from tiny_model import TINY_CHANNELS, synthetic_images, train_tiny_model

FEW_TRANSFORMS = [{"kind": "rotate", "degrees": -8}, {"kind": "blur", "radius": 0.6},
                  {"kind": "noise", "sigma": 6, "seed": 0}, {"kind": "jpeg", "quality": 60}]


@pytest.fixture(scope="module")
def model():
    return train_tiny_model(*synthetic_images(1200), steps=40)


@pytest.fixture(scope="module")
def test_set():
    return synthetic_images(120, seed=1)


def test_rotation_by_a_right_angle_is_numpy_rot90(test_set):
    images = test_set[0][:4]
    np.testing.assert_array_equal(robustness.apply_transform(images, {"kind": "rotate", "degrees": 0}), images)
    # PIL takes exact quarter turns as transposes, so this checks direction and layout, not interpolation.
    rotated = np.stack([np.asarray(Image.fromarray(i).rotate(90)) for i in images])
    np.testing.assert_array_equal(rotated, np.rot90(images, k=1, axes=(1, 2)))


def test_transforms_change_images_by_their_strength(test_set):
    images = test_set[0][:16]

    def moved(spec):
        out = robustness.apply_transform(images, spec)
        assert out.dtype == np.uint8 and out.shape == images.shape
        return np.abs(out.astype(float) - images).mean()

    assert moved({"kind": "noise", "sigma": 0, "seed": 0}) == 0
    assert 0 < moved({"kind": "noise", "sigma": 2, "seed": 0}) < moved({"kind": "noise", "sigma": 8, "seed": 0})
    assert 0 < moved({"kind": "jpeg", "quality": 95}) < moved({"kind": "jpeg", "quality": 10})
    assert 0 < moved({"kind": "blur", "radius": 0.5}) < moved({"kind": "blur", "radius": 2})
    assert 0 < moved({"kind": "rotate", "degrees": 3}) < moved({"kind": "rotate", "degrees": 20})
    noise = {"kind": "noise", "sigma": 6, "seed": 3}
    np.testing.assert_array_equal(robustness.apply_transform(images, noise), robustness.apply_transform(images, noise))


def test_fgsm_stays_within_epsilon_and_raises_the_loss(model, test_set):
    images, labels = test_set
    adversarial = robustness.fgsm(model, images, labels, epsilon=4, batch_size=50)
    assert np.abs(adversarial.astype(int) - images).max() == 4

    def loss(x):
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(torch.from_numpy(to_input(x))), torch.from_numpy(labels))

    assert loss(adversarial) > loss(images)
    assert robustness.fgsm(model, images, labels, epsilon=0).tolist() == images.tolist()


def test_vote_takes_the_majority_and_breaks_ties_by_probability():
    a, b = [5.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    assert robustness.vote([[a], [a], [b]]).tolist() == [0]
    assert robustness.vote([[b], [b], [a]]).tolist() == [1]
    # One vote each: class 0 is far more probable in its copy than class 1 in the other.
    assert robustness.vote([[a], [b]]).tolist() == [0]


def test_evaluation_reports_clean_and_attacked_accuracy(model, test_set, tmp_path):
    images, labels = test_set
    result = robustness.run_evaluation(model, images, labels, tmp_path, FEW_TRANSFORMS, epsilons=[8])
    clean, attacked = result["results"]
    assert (clean["epsilon"], attacked["epsilon"]) == (0, 8)
    assert clean["accuracy"] == float((torch_logits(model, images).argmax(axis=1) == labels).mean())
    assert clean["accuracy"] > 0.5, "the tiny model should have learned the synthetic classes"
    assert attacked["accuracy"] < clean["accuracy"], "FGSM at 8 levels should hurt the plain model"
    assert set(clean["transform_accuracy"]) == {robustness.transform_label(t) for t in FEW_TRANSFORMS}
    assert json.loads((tmp_path / "robustness.json").read_text()) == result
    table = (tmp_path / "robustness.md").read_text()
    assert "| FGSM ε=8 |" in table and "accuracy with voting" in table
    assert (tmp_path / "robustness.png").read_bytes().startswith(b"\x89PNG")


def test_balanced_subset_takes_every_class():
    labels = np.repeat(np.arange(10), 50)  # stored class by class, like the dataset splits
    keep = balanced_subset(labels, 30)
    assert np.bincount(labels[keep]).tolist() == [3] * 10
    assert balanced_subset(labels, 0).tolist() == list(range(500))


@pytest.mark.parametrize("spec, fragment", [
    ({"kind": "shear"}, "kind one of rotate, blur, noise, jpeg"),
    ({"kind": "jpeg", "quality": 0}, "quality = 0"),
    ({"kind": "noise", "sigma": 4}, "seed = None"),
    ({"kind": "blur", "radius": 1, "size": 3}, "unknown key 'size'"),
])
def test_bad_transforms_are_named(spec, fragment):
    with pytest.raises(ValueError, match=r"robustness.transforms\[2\]") as err:
        robustness.parse_transform(spec, where="robustness.transforms[2]")
    assert fragment in str(err.value)


def test_stage_reads_a_balanced_subset_of_the_split(model, tmp_path):
    images, labels = synthetic_images(200, seed=6)
    order = np.argsort(labels, kind="stable")  # stored class by class, as the dataset stage does
    np.save(tmp_path / "test_images.npy", images[order])
    np.save(tmp_path / "test_labels.npy", labels[order])
    torch.save(model.state_dict(), tmp_path / "cifar.pth")

    result = robustness.run_stage(tmp_path / "cifar.pth", TINY_CHANNELS, tmp_path, tmp_path / "out",
                                  transforms=FEW_TRANSFORMS[:2], epsilons=[4], max_images=40)
    assert result["images"] == 40 and [r["epsilon"] for r in result["results"]] == [0, 4]
    assert result["voters"] == ["original", "rotate -8°", "blur r=0.6"]
    assert (tmp_path / "out" / "robustness.md").is_file()


@pytest.mark.parametrize("epsilons", [[0.5], [-1], [300], 4])
def test_bad_epsilons_are_named(epsilons):
    with pytest.raises(ValueError, match=r"robustness.epsilons = .*integers in \[0, 255\]"):
        robustness.parse_epsilons(epsilons, where="robustness.epsilons")
    assert robustness.parse_epsilons([8, 2, 2]) == [0, 2, 8]
