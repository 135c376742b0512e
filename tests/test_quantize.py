import json

import numpy as np
import pytest
from PIL import Image

from pipeline.int8 import image_inc, quantize


@pytest.fixture
def data_dir(tmp_path):
    """classes.json plus images/<class>/NNNN.png with 2, 1 and 3 images."""
    classes = {"airplane": 2, "bird": 1, "cat": 3}
    (tmp_path / "classes.json").write_text(json.dumps(list(classes)))
    for cls, count in classes.items():
        (tmp_path / "images" / cls).mkdir(parents=True)
        for n in range(count):
            Image.fromarray(np.full((32, 32, 3), n, np.uint8)).save(tmp_path / "images" / cls / f"{n:04d}.png")
    return tmp_path


def test_calibration_images_pick_per_class_in_class_order(data_dir):
    names = lambda paths: [f"{p.parent.name}/{p.name}" for p in paths]  # noqa: E731
    assert names(quantize.calibration_images(data_dir, 1)) == ["airplane/0000.png", "bird/0000.png", "cat/0000.png"]
    with pytest.raises(ValueError, match=r"classes \['bird'\] have fewer than 2 calibration images"):
        quantize.calibration_images(data_dir, 2)
    with pytest.raises(ValueError, match=r"classes \['airplane', 'bird'\] have fewer than 3"):
        quantize.calibration_images(data_dir, 3)


def test_test_image_out_of_range_names_the_config_key(data_dir, tmp_path):
    np.save(data_dir / "test_images.npy", np.zeros((3, 32, 32, 3), np.uint8))
    np.save(data_dir / "test_labels.npy", np.array([0, 2, 2]))
    image_inc.image_inc_stage(data_dir, tmp_path / "a.inc", "cat", 1)
    assert "// Image: test/cat/0001" in (tmp_path / "a.inc").read_text()
    with pytest.raises(ValueError, match=r"quantization.test_image_index = 2 \(cat\): the split has 2 images"):
        image_inc.image_inc_stage(data_dir, tmp_path / "b.inc", "cat", 2)
    with pytest.raises(ValueError, match=r"test_image_class = 'horse'.*valid classes: airplane, bird, cat"):
        image_inc.image_inc_stage(data_dir, tmp_path / "b.inc", "horse", 0)
