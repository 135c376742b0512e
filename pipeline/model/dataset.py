"""Dataset stage: read CIFAR-10 (official pickled archive, or an image-folder tree / tar of PNG/JPEG) into a
canonical, content-hashed form in build/data/; then, from its held-out split, the Glow tool folders (images/,
dataset-tuning/).

Canonical form: {train,val,test}_images.npy (uint8 N x 32 x 32 x 3, RGB), {split}_labels.npy (int64),
classes.json, manifest.json (source, counts, SHA-256 of every file). The validation split is held out of train
with a seeded draw; calibration and tuning images come from it, never from test.
"""
import hashlib
import io
import json
import pickle
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core import atomic
from pipeline.core.dataset_files import DATASET_ARRAYS, SPLITS
from pipeline.core.provenance import content_sha256, file_sha256

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_NAME = "cifar-10-python.tar.gz"
SHARED_JPEG = Path("..") / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIDE = 32
CALIBRATION_FOLDER, TUNING_FOLDER = "images", "dataset-tuning"  # what Glow's image-classifier and model-tuner read


class DatasetError(ValueError):
    """Bad dataset input, with a message naming the file, the value and the fix."""


def resolve_source(source: str, root: Path) -> str:
    """'auto' picks data/cifar-10-python.tar.gz, else the shared JPEG copy, else the official download."""
    if source == "auto":
        for candidate in (root / "data" / OFFICIAL_NAME, root / SHARED_JPEG):
            if candidate.exists():
                return str(candidate.resolve())
        return "official"
    if source == "official":
        return source
    path = Path(source)
    path = path if path.is_absolute() else (root / path)
    if not path.exists():
        raise DatasetError(f"DATASET_SOURCE / dataset.source = {source!r}: {path} does not exist; give an existing "
                           f"cifar-10-python.tar.gz, image folder or .tar/.tar.gz, or 'official' to download")
    return str(path.resolve())


def source_fingerprint(source: str) -> str:
    """Cheap identity of a source for doit's up-to-date check: names, sizes and mtimes, not contents."""
    path = Path(source)
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ---- readers: each returns {'train': (images, labels), 'test': (images, labels)}, classes -------------------

def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_official(target: Path) -> Path:
    """Fetch the official archive to `target` (atomically), with progress; md5 is checked by the reader."""
    from tqdm import tqdm

    print(f"downloading {OFFICIAL_URL} -> {target}", file=sys.stderr)
    try:
        with urllib.request.urlopen(OFFICIAL_URL, timeout=60) as response, atomic.atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length", 0)) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:
        raise DatasetError(f"cannot download {OFFICIAL_URL} ({err}); without network, copy {OFFICIAL_NAME} to "
                           f"{target} or set DATASET_SOURCE to a local dataset") from None
    return target


def read_official(path: Path, limits: dict):
    digest = md5sum(path)
    if digest != OFFICIAL_MD5:
        raise DatasetError(f"{path}: md5 {digest} does not match the official {OFFICIAL_MD5}; the file is corrupt "
                           f"or not the official CIFAR-10 archive: delete it and download it again")
    batches = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name.startswith(("data_batch_", "test_batch", "batches.meta")):
                    batches[name] = pickle.loads(tar.extractfile(member).read(), encoding="bytes")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"{path}: cannot read the archive ({err}); delete it and download it again") from None
    classes = [c.decode() for c in batches["batches.meta"][b"label_names"]]

    def join(names):
        data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
        labels = np.concatenate([batches[n][b"labels"] for n in names]).astype(np.int64)
        return np.ascontiguousarray(data, dtype=np.uint8), labels

    splits = {"train": join([f"data_batch_{i}" for i in range(1, 6)]), "test": join(["test_batch"])}
    return {s: _limit_per_class(*splits[s], limits[s]) for s in splits}, classes


def _limit_per_class(images, labels, limit):
    if not limit:
        return images, labels
    keep = np.concatenate([np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)])
    keep.sort()
    return images[keep], labels[keep]


MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


def _image_entries(names, origin: str):
    """Group `{train,test}/<class>/<file>` paths; refuse files that are not images."""
    entries = {"train": {}, "test": {}}
    for name in names:
        match = MEMBER.search(name)
        if not match or Path(name).name.startswith("."):
            continue
        split, cls, filename = match.groups()
        if not filename.lower().endswith(IMAGE_SUFFIXES):
            raise DatasetError(f"{origin}: {name} is not an image (expected {'/'.join(IMAGE_SUFFIXES)}); "
                               f"remove it from the dataset")
        entries[split].setdefault(cls, []).append(name)
    for split in entries:
        if not entries[split]:
            raise DatasetError(f"{origin}: no {split}/<class>/*.png|jpg images found; the dataset must hold "
                               f"train/ and test/ folders with one sub-folder per class")
    train, test = set(entries["train"]), set(entries["test"])
    if train != test:
        raise DatasetError(f"{origin}: train and test have different classes (only in train: "
                           f"{sorted(train - test) or 'none'}; only in test: {sorted(test - train) or 'none'}); "
                           f"every class needs images in both")
    return entries


def _decode(data: bytes, name: str, origin: str, converted: list):
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{origin}: {name} is not a readable image ({err}); remove or replace it") from None
    if image.size != (SIDE, SIDE):
        raise DatasetError(f"{origin}: {name} is {image.size[0]}x{image.size[1]}; refused: the model takes "
                           f"{SIDE}x{SIDE} images, resize the dataset first")
    if image.mode != "RGB":
        converted.append(f"{name} ({image.mode})")
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_image_tree(source: Path, limits: dict):
    """An image-folder tree or a .tar/.tar.gz of {train,test}/<class>/*.png|jpg."""
    origin = str(source)
    if source.is_dir():
        names = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()]
        read = lambda name: (source / name).read_bytes()  # noqa: E731
        tar = None
    else:
        try:
            tar = tarfile.open(source, "r:*")
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DatasetError(f"{origin}: cannot read the archive ({err}); it is truncated or corrupt: "
                               f"fetch it again") from None
        names = list(members)
        read = lambda name: tar.extractfile(members[name]).read()  # noqa: E731
    try:
        entries = _image_entries(names, origin)
        classes = sorted(entries["train"])
        converted, splits = [], {}
        for split in ("train", "test"):
            images, labels = [], []
            for label, cls in enumerate(classes):
                chosen = sorted(entries[split][cls])[: limits[split] or None]
                images += [_decode(read(name), name, origin, converted) for name in chosen]
                labels += [label] * len(chosen)
            splits[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DatasetError(f"{origin}: cannot read the archive ({err}); it is truncated or corrupt: "
                           f"fetch it again") from None
    finally:
        if tar is not None:
            tar.close()
    if converted:
        print(f"warning: {origin}: converted {len(converted)} image(s) to RGB, e.g. {converted[0]}", file=sys.stderr)
    return splits, classes


def read_source(source: str, root: Path, limits: dict):
    if source == "official":
        path = root / "data" / OFFICIAL_NAME
        if not path.exists():
            download_official(path)
        return read_official(path, limits)
    path = Path(source)
    if path.is_file() and path.name == OFFICIAL_NAME:
        return read_official(path, limits)
    return read_image_tree(path, limits)


# ---- the stage -------------------------------------------------------------------------------------------

def split_validation(images, labels, per_class: int, seed: int):
    """Hold `per_class` images of each class out of train, drawn with a seeded generator."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise DatasetError(f"class {c} has {len(idx)} training images, too few to hold out "
                               f"dataset.validation_per_class = {per_class}; lower it")
        held.append(np.sort(rng.choice(idx, per_class, replace=False)))
    held = np.concatenate(held)
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return (images[~mask], labels[~mask]), (images[held], labels[held])


def _write_pngs(folder: Path, images, labels, classes, per_class: int, csv_name: str | None):
    """`per_class` images of each class as PNGs; with csv_name, a flat folder plus a Labels.csv like the note's."""
    with atomic.atomic_dir(folder) as tmp:
        rows = []
        for label, cls in enumerate(classes):
            idx = np.flatnonzero(labels == label)[:per_class]
            for n, i in enumerate(idx):
                rel = f"{cls}_{n:04d}.png" if csv_name else f"{cls}/{n:04d}.png"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i]).save(tmp / rel)
                rows.append(f"{rel},{label}\n")
        if csv_name:
            (tmp / csv_name).write_text("".join(rows))


def build_dataset(source: str, out_dir, root, validation_per_class: int, train_per_class: int = 0,
                  test_per_class: int = 0, seed: int = 0) -> dict:
    """The canonical arrays of every split, classes.json and manifest.json (cached: restoring them is cheaper
    than decoding the archive again)."""
    out_dir, root = Path(out_dir), Path(root)
    resolved = resolve_source(source, root)
    limits = {"train": train_per_class and train_per_class + validation_per_class, "test": test_per_class}
    splits, classes = read_source(resolved, root, limits)
    train, val = split_validation(*splits["train"], validation_per_class, seed)
    arrays = {"train": train, "val": val, "test": splits["test"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in arrays.items():
        atomic.save_npy(out_dir / f"{split}_images.npy", images)
        atomic.save_npy(out_dir / f"{split}_labels.npy", labels)
    atomic.write_text(out_dir / "classes.json", json.dumps(classes) + "\n")
    described = resolved if resolved == "official" else Path(resolved).name
    manifest = {
        "source": described,
        "classes": classes,
        "counts": {s: int(len(arrays[s][1])) for s in SPLITS},
        "files": {name: file_sha256(out_dir / name) for name in (*DATASET_ARRAYS, "classes.json")},
    }
    atomic.write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def write_image_folders(data_dir, listing, images_per_class: int, tuning_per_class: int) -> dict:
    """The Glow tools' folders from the held-out split: images/<class>/NNNN.png (calibration, and the tuner's
    held-out check) and dataset-tuning/ with Labels.csv, then `listing` (the SHA-256 of each folder, so one file
    stands for them as a dependency). Derived from val_*.npy, so a restored dataset needs no archive."""
    data_dir = Path(data_dir)
    images, labels = load_split(data_dir, "val")
    classes = load_classes(data_dir)
    needed = images_per_class + tuning_per_class
    held_out = np.bincount(labels, minlength=len(classes))
    if held_out.min() < needed:
        short = classes[int(held_out.argmin())]
        raise DatasetError(f"{data_dir / 'val_labels.npy'}: class {short!r} has {int(held_out.min())} held-out "
                           f"images, fewer than dataset.images_per_class + dataset.tuning_per_class = {needed}: "
                           f"the calibration and tuning images are drawn from the held-out split; raise "
                           f"dataset.validation_per_class or lower those two")
    _write_pngs(data_dir / CALIBRATION_FOLDER, images, labels, classes, images_per_class, csv_name=None)
    # Tuning images come after the calibration ones so the two sets do not overlap.
    offset = np.concatenate([np.flatnonzero(labels == c)[images_per_class:] for c in range(len(classes))])
    _write_pngs(data_dir / TUNING_FOLDER, images[offset], labels[offset], classes, tuning_per_class,
                csv_name="Labels.csv")
    folders = {name: content_sha256(data_dir / name) for name in (CALIBRATION_FOLDER, TUNING_FOLDER)}
    atomic.write_text(Path(listing), json.dumps(folders, indent=2, sort_keys=True) + "\n")
    return folders


def load_split(data_dir, split: str):
    data_dir = Path(data_dir)
    return np.load(data_dir / f"{split}_images.npy"), np.load(data_dir / f"{split}_labels.npy")


def load_classes(data_dir) -> list[str]:
    return json.loads((Path(data_dir) / "classes.json").read_text())
