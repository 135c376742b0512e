"""Two clean builds of the same tree and config, in two folders with separate empty caches, must produce
byte-identical artifacts under build/ (models, profiles, bundles, sources, ELFs, release archive)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import provenance, release

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = "configs/smoke.toml"
NOT_ARTIFACTS = (".doit.db",)  # doit's own state database, if it is kept under build/


def doit(clone: Path, env: dict, *tasks: str) -> None:
    result = subprocess.run([sys.executable, "-m", "doit", f"config={SMOKE_CONFIG}", *tasks], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        pytest.fail(f"doit {' '.join(tasks)} failed in {clone} (exit {result.returncode}):\n"
                    + "\n".join((result.stdout + result.stderr).splitlines()[-40:]))


def task_names(clone: Path, env: dict) -> set[str]:
    listing = subprocess.run([sys.executable, "-m", "doit", "list", "--quiet", f"config={SMOKE_CONFIG}"],
                             cwd=clone, env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def build_clone(clone: Path, dataset_dir: Path, cache_dir: Path, hash_seed: str) -> dict[str, str]:
    provenance.clone_working_tree(REPO, clone)
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "PIPELINE_CACHE_DIR")}
    # different hash seeds shake out any dependence on set/dict iteration order of strings
    env.update(DATASET_SOURCE=str(dataset_dir), PIPELINE_CACHE_DIR=str(cache_dir), PYTHONHASHSEED=hash_seed)
    doit(clone, env)
    if "release" in task_names(clone, env):
        doit(clone, env, "release")
    digests = provenance.tree_digests(clone / "build")
    return {path: sha for path, sha in digests.items() if not Path(path).name.startswith(NOT_ARTIFACTS)}


def test_two_clean_builds_are_byte_identical(tmp_path, request):
    missing = [name for name in ("dodo.py", SMOKE_CONFIG) if not (REPO / name).is_file()]
    if missing:
        pytest.skip(f"the pipeline is not complete yet: {', '.join(missing)} missing")
    try:
        dataset_dir = request.getfixturevalue("small_dataset_dir")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py does not provide the small_dataset_dir fixture yet")

    # folder names of different lengths, so a path leaking into an artifact changes its size too
    first = build_clone(tmp_path / "a", dataset_dir, tmp_path / "cache-a", "1")
    second = build_clone(tmp_path / "second_clone", dataset_dir, tmp_path / "cache-b", "2")

    suffixes = {Path(path).suffix for path in first}
    assert {".pth", ".onnx"} <= suffixes, f"the smoke build made no model files; it made: {sorted(first)}"
    differences = provenance.tree_differences(first, second, names=("build a", "build b"))
    assert not differences, "artifacts differ between two clean builds:\n" + "\n".join(differences)
    for archive in (tmp_path / "a" / "build").rglob("*.tar.gz"):
        if "release" in archive.parts:
            release.verify_release(archive)
