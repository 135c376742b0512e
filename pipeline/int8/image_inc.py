"""input_image_test.inc: one test image as the firmware's input placeholder bytes, like the note's
glow_process_image.py (neg1to1, NCHW, RGB, float32 little-endian, "0X%02X, " with 20 bytes per line)."""
import numpy as np

from pipeline.core.atomic import write_text
from pipeline.model.dataset import load_classes, load_split
from pipeline.model.shapes import to_input

BYTES_PER_LINE = 20


def render_image_inc(image: np.ndarray, image_name: str, label: int, class_name: str) -> str:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"test image {image_name!r} has dtype {image.dtype} and shape {image.shape}; expected "
                         f"uint8 HxWx3 RGB (pick it from the dataset's uint8 NHWC images)")
    data = to_input(image[None]).astype("<f4").tobytes()
    header = [f"// Image: {image_name}", f"// Label: {label} ({class_name})",
              "// Settings: -image-mode=neg1to1 -image-layout=NCHW -image-channel-order=RGB",
              f"// Data: float32 little-endian, shape 1x3x{image.shape[0]}x{image.shape[1]}, {len(data)} bytes"]
    lines = ["".join(f"0X{b:02X}, " for b in data[i:i + BYTES_PER_LINE]) for i in range(0, len(data), BYTES_PER_LINE)]
    return "\n".join(header + lines) + "\n"


def write_image_inc(image: np.ndarray, out_path, image_name: str, label: int, class_name: str) -> None:
    """Write the .inc for a uint8 HWC RGB image; `image_name` (e.g. "test/horse/0000.jpg") and the label are
    recorded in the header comments."""
    write_text(out_path, render_image_inc(image, image_name, label, class_name))


def image_of_class(labels: np.ndarray, label: int, index: int = 0) -> int:
    """Position of the `index`-th image with `label` (the default test image is the first horse, label 7)."""
    hits = np.flatnonzero(np.asarray(labels) == label)
    if index >= len(hits):
        raise ValueError(f"the split has {len(hits)} images with label {label}, so there is no image {index} of it; "
                         f"choose an index below {len(hits)} or another class")
    return int(hits[index])


def image_inc_stage(data_dir, out_path, class_name: str, index: int) -> None:
    """input_image_test.inc from the `index`-th test image of `class_name` (default: the first horse)."""
    classes = load_classes(data_dir)
    if class_name not in classes:
        raise ValueError(f"quantization.test_image_class = {class_name!r} is not a class of the dataset; "
                         f"valid classes: {', '.join(classes)}")
    images, labels = load_split(data_dir, "test")
    label = classes.index(class_name)
    try:
        position = image_of_class(labels, label, index)
    except ValueError as err:
        raise ValueError(f"quantization.test_image_index = {index} ({class_name}): {err}") from None
    write_image_inc(images[position], out_path, f"test/{class_name}/{index:04d}", label, class_name)
