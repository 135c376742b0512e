"""Two clean builds of the same tree and config, in two folders with separate empty caches, produce byte-identical
files under build/: data, models, profiles, bundles, sources, objects, ELFs, emulator logs, reports, plots and the
release archive. Only doit's own bookkeeping (provenance.DOIT_STATE) may differ."""
from fnmatch import fnmatch

from conftest import copy_project, run_doit, smoke_env
from pipeline.core import provenance
from pipeline.delivery import release

SMOKE = "config=configs/smoke.toml"
# What the issue names, so the comparison cannot pass on a build that made none of it.
REQUIRED = ("model/*.pth", "model/*.onnx", "quant/profile.yml", "quant/profile_tuned.yml", "*/bundle/*.h",
            "*/bundle/*.c", "*/bundle/*.weights.bin", "*/bundle/*.weights.txt", "*/bundle/*.o", "*/source/main.c",
            "*/firmware.elf", "release/*.tar.gz")


def test_two_clean_builds_are_byte_identical(smoke_copy, smoke_source, tmp_path):
    first, first_env = smoke_copy  # built from an empty cache by the session's smoke_build, in another folder
    run_doit(first, SMOKE, "release", env=first_env)

    # a folder name of another length, so a path leaking into an artifact changes its size too; a fixed hash
    # seed (the first build had a random one) shakes out any dependence on the order of sets of strings
    second = copy_project(tmp_path / "second_clone_in_a_longer_folder")
    env = {**smoke_env(smoke_source, tmp_path / "empty_cache"), "PYTHONHASHSEED": "2"}
    built = run_doit(second, SMOKE, env=env)
    assert "train: cache miss" in built.stdout and "tune: cache miss" in built.stdout, "not a clean build"
    run_doit(second, SMOKE, "release", env=env)

    first_files = provenance.artifact_digests(first / "build")
    missing = [pattern for pattern in REQUIRED if not any(fnmatch(path, pattern) for path in first_files)]
    assert not missing, f"the smoke build made nothing matching {missing}; it made: {sorted(first_files)}"
    differences = provenance.tree_differences(first_files, provenance.artifact_digests(second / "build"),
                                              names=("first build", "second build"))
    assert not differences, "artifacts differ between two clean builds:\n" + "\n".join(differences)
    for archive in (second / "build" / "release").glob("*.tar.gz"):
        release.verify_release(archive)
