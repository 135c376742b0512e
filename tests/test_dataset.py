import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, make_image_folder
from pipeline.model import dataset

SMALL = dict(validation_per_class=4)
FOLDERS = dict(images_per_class=2, tuning_per_class=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("folder"), train_per_class=8, test_per_class=3)


def build(source, out, **kw):
    return dataset.build_dataset(str(source), out, root=out.parent, **{**SMALL, **kw})


def image_folders(data_dir, **kw):
    return dataset.write_image_folders(data_dir, data_dir / "image_folders.json", **{**FOLDERS, **kw})


def test_image_folder_gives_disjoint_splits_and_glow_folders(folder, tmp_path):
    manifest = build(folder, tmp_path / "data")
    assert manifest["classes"] == CLASSES
    assert manifest["counts"] == {"train": 40, "val": 40, "test": 30}
    train_x, _ = dataset.load_split(tmp_path / "data", "train")
    val_x, val_y = dataset.load_split(tmp_path / "data", "val")
    test_x, _ = dataset.load_split(tmp_path / "data", "test")
    assert train_x.shape == (40, 32, 32, 3) and train_x.dtype == np.uint8
    as_set = lambda xs: {x.tobytes() for x in xs}  # noqa: E731
    assert not as_set(train_x) & as_set(val_x) and not as_set(val_x) & as_set(test_x)
    listed = image_folders(tmp_path / "data")
    assert listed == json.loads((tmp_path / "data" / "image_folders.json").read_text())
    pngs = sorted((tmp_path / "data" / "images").rglob("*.png"))
    assert len(pngs) == 2 * 10 and pngs[0].parent.name == "airplane"
    # calibration images are validation images, byte for byte
    assert np.asarray(Image.open(pngs[0])).tobytes() in as_set(val_x)
    rows = (tmp_path / "data" / "dataset-tuning" / "Labels.csv").read_text().splitlines()
    assert len(rows) == 10 and rows[0] == "airplane_0000.png,0"
    assert {Path_name(r) for r in rows} == {p.name for p in (tmp_path / "data" / "dataset-tuning").glob("*.png")}


def Path_name(row):
    return row.split(",")[0]


def test_build_is_deterministic_and_recorded_in_the_manifest(folder, tmp_path):
    a = build(folder, tmp_path / "a")
    b = build(folder, tmp_path / "b")
    assert a == b
    digest = dataset.file_sha256(tmp_path / "a" / "train_images.npy")
    assert a["files"]["train_images.npy"] == digest


def test_tar_archive_matches_the_folder(folder, tmp_path):
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar10-jpeg")
    from_tar = build(archive, tmp_path / "t")
    from_dir = build(folder, tmp_path / "d")
    assert from_tar["files"] == from_dir["files"]


def test_per_class_limits(folder, tmp_path):
    manifest = build(folder, tmp_path / "data", train_per_class=2, test_per_class=1)
    assert manifest["counts"] == {"train": 20, "val": 40, "test": 10}


def fake_official(path, per_class=6):
    """A cifar-10-python.tar.gz in the official layout (random pixels)."""
    rng = np.random.default_rng(1)

    def batch(n):
        labels = [i % 10 for i in range(n)]
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}

    with tarfile.open(path, "w:gz") as tar:
        members = {f"data_batch_{i}": batch(per_class * 2) for i in range(1, 6)}
        members["test_batch"] = batch(20)
        members["batches.meta"] = {b"label_names": [c.encode() for c in CLASSES]}
        for name, obj in members.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_official_archive_is_read_in_its_layout(tmp_path, monkeypatch):
    archive = fake_official(tmp_path / dataset.OFFICIAL_NAME)
    monkeypatch.setattr(dataset, "OFFICIAL_MD5", dataset.md5sum(archive))
    manifest = build(archive, tmp_path / "data", validation_per_class=2)
    assert manifest["counts"] == {"train": 40, "val": 20, "test": 20}
    images, labels = dataset.load_split(tmp_path / "data", "test")
    with tarfile.open(archive) as tar:
        raw = pickle.loads(tar.extractfile("cifar-10-batches-py/test_batch").read())
    first = raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(images[0], first) and labels[0] == raw[b"labels"][0]


def test_official_md5_mismatch_is_refused(tmp_path):
    archive = fake_official(tmp_path / dataset.OFFICIAL_NAME)
    with pytest.raises(dataset.DatasetError, match=f"md5 .* does not match the official {dataset.OFFICIAL_MD5}"):
        build(archive, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_truncated_archive(folder, tmp_path):
    archive = tmp_path / "ds.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="x")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(dataset.DatasetError, match=r"ds.tar.gz.*truncated or corrupt"):
        build(archive, tmp_path / "data")


def copy_folder(folder, dest):
    import shutil

    shutil.copytree(folder, dest)
    return dest


@pytest.mark.parametrize("damage, pattern", [
    (lambda d: __import__("shutil").rmtree(d / "test" / "frog"), r"only in train: \['frog'\]"),
    (lambda d: (d / "train" / "cat" / "notes.txt").write_text("x"), r"train/cat/notes.txt is not an image"),
    (lambda d: (d / "train" / "cat" / "0000.png").write_bytes(b"not a png"), r"train/cat/0000.png is not a readable"),
    (lambda d: Image.new("RGB", (64, 64)).save(d / "train" / "dog" / "0001.png"), r"dog/0001.png is 64x64; refused"),
    (lambda d: [p.unlink() for p in (d / "train" / "ship").iterdir()], r"only in test: \['ship'\]"),
])
def test_bad_image_folders_are_refused_with_the_file_named(folder, tmp_path, damage, pattern):
    bad = copy_folder(folder, tmp_path / "bad")
    damage(bad)
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("built before")
    with pytest.raises(dataset.DatasetError, match=pattern):
        build(bad, out)
    assert (out / "keep.txt").read_text() == "built before"
    assert not list(out.glob("*.npy"))


def test_grey_and_rgba_images_are_converted_with_a_warning(folder, tmp_path, capsys):
    odd = copy_folder(folder, tmp_path / "odd")
    Image.new("L", (32, 32), 77).save(odd / "train" / "cat" / "0000.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 4)).save(odd / "test" / "cat" / "0000.png")
    build(odd, tmp_path / "data")
    assert "converted 2 image(s) to RGB" in capsys.readouterr().err
    images, labels = dataset.load_split(tmp_path / "data", "test")
    assert images[labels == 3][0].tolist()[0][0] == [1, 2, 3]


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(dataset.DatasetError, match="nowhere.tar.gz does not exist"):
        dataset.resolve_source(str(tmp_path / "nowhere.tar.gz"), tmp_path)


def test_too_few_images_to_hold_out(folder, tmp_path):
    with pytest.raises(dataset.DatasetError, match="validation_per_class = 8"):
        build(folder, tmp_path / "data", validation_per_class=8)
    build(folder, tmp_path / "data", validation_per_class=2)
    with pytest.raises(dataset.DatasetError, match=r"'airplane' has 2 held-out images, fewer than "
                                                   r"dataset.images_per_class \+ dataset.tuning_per_class = 3"):
        image_folders(tmp_path / "data")
    assert not (tmp_path / "data" / "images").exists() and not (tmp_path / "data" / "image_folders.json").exists()


def test_classes_json(folder, tmp_path):
    build(folder, tmp_path / "data")
    assert json.loads((tmp_path / "data" / "classes.json").read_text()) == CLASSES
