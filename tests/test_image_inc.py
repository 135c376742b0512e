"""input_image_test.inc: the note's glow_process_image.py format."""
import re

import numpy as np
import pytest

from pipeline.int8 import image_inc
from pipeline.model.shapes import to_input


def test_inc_format_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    image_inc.write_image_inc(image, tmp_path / "input_image_test.inc", "test/horse/0000.jpg", 7, "horse")
    text = (tmp_path / "input_image_test.inc").read_text()
    lines = text.splitlines()
    header = [line for line in lines if line.startswith("//")]
    body = [line for line in lines if not line.startswith("//")]
    assert lines[:len(header)] == header and "test/horse/0000.jpg" in header[0]
    assert any("horse" in h for h in header) and any("neg1to1" in h and "NCHW" in h and "RGB" in h for h in header)
    assert all(re.fullmatch(r"(0X[0-9A-F]{2}, ){20}", line) for line in body[:-1])
    data = bytes(int(v, 16) for v in re.findall(r"0X([0-9A-F]{2}),", "\n".join(body)))
    assert len(data) == 3 * 32 * 32 * 4
    decoded = np.frombuffer(data, "<f4").reshape(1, 3, 32, 32)
    np.testing.assert_array_equal(decoded, to_input(image[None]))
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        image_inc.render_image_inc(np.zeros((32, 32), np.float32), "x.png", 0, "airplane")


def test_image_of_class():
    assert image_inc.image_of_class(np.array([3, 7, 7]), 7) == 1
    assert image_inc.image_of_class(np.array([3, 7, 7]), 7, index=1) == 2
    with pytest.raises(ValueError, match="label 5"):
        image_inc.image_of_class(np.array([3, 7]), 5)
    with pytest.raises(ValueError, match="2 images with label 7.*below 2"):
        image_inc.image_of_class(np.array([3, 7, 7]), 7, index=2)
