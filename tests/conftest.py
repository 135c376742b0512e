"""Shared fixtures: small datasets the tests make themselves, and throwaway copies of the project to run doit in."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.provenance import clone_working_tree

ROOT = Path(__file__).resolve().parent.parent
SHARED_JPEG = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_image_folder(root: Path, train_per_class: int, test_per_class: int, seed: int = 0,
                      classes=CLASSES) -> Path:
    """{train,test}/<class>/NNNN.png with a learnable pattern per class: a class colour and a stripe
    direction, plus noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 215, size=(len(classes), 3))
    yy, xx = np.mgrid[0:32, 0:32]
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            stripes = np.sin((xx * np.cos(label) + yy * np.sin(label)) * 0.8)[..., None] * 40
            for n in range(count):
                noise = rng.normal(0, 25, size=(32, 32, 3))
                image = np.clip(colours[label] + stripes + noise, 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"{n:04d}.png")
    return root


@pytest.fixture(scope="session")
def small_dataset_dir(tmp_path_factory) -> Path:
    """An image-folder dataset big enough for configs/smoke.toml (340 train and 30 test images per class)."""
    return make_image_folder(tmp_path_factory.mktemp("small_dataset"), train_per_class=340, test_per_class=30)


@pytest.fixture(scope="session")
def smoke_source(small_dataset_dir) -> str:
    """The dataset smoke builds use: the shared real CIFAR-10 JPEGs when present, else the synthetic folder."""
    return str(SHARED_JPEG) if SHARED_JPEG.exists() else str(small_dataset_dir)


def copy_project(dest: Path) -> Path:
    """What a fresh clone of this working tree would hold (tracked and untracked-but-not-ignored files)."""
    return clone_working_tree(ROOT, dest)


def run_doit(tree: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run doit in `tree` with this interpreter's environment; returns the completed process (text output)."""
    # a developer's remote step cache stays out of the tests unless a test names one
    full_env = {**{k: v for k, v in os.environ.items() if k != "PIPELINE_CACHE_URL"}, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "doit", *args], cwd=tree, env=full_env, capture_output=True,
                            text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def executed(result: subprocess.CompletedProcess) -> set[str]:
    """Tasks doit ran (lines '.  task'), as opposed to found up to date ('-- task')."""
    return {line[3:].strip() for line in result.stdout.splitlines() if line.startswith(".  ")}


@pytest.fixture(scope="session")
def smoke_build_cache(tmp_path_factory) -> Path:
    """The step cache smoke_build starts empty and fills (train and tune entries). Request smoke_build too."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory, smoke_source, smoke_build_cache) -> Path:
    """A copy of the project with `doit config=configs/smoke.toml` built once. Read-only: copy it to change it."""
    tree = copy_project(tmp_path_factory.mktemp("smoke_build"))
    run_doit(tree, "config=configs/smoke.toml", env=smoke_env(smoke_source, smoke_build_cache))
    return tree


def smoke_env(source: str, cache_dir: Path) -> dict:
    return {"DATASET_SOURCE": source, "PIPELINE_CACHE_DIR": str(cache_dir)}


@pytest.fixture
def smoke_copy(smoke_build, tmp_path, smoke_source) -> tuple[Path, dict]:
    """A private, already-built copy of the smoke project (build/ included) and the env to run doit in it."""
    tree = tmp_path / "tree"
    shutil.copytree(smoke_build, tree, symlinks=True)
    return tree, smoke_env(smoke_source, tmp_path / "cache")
