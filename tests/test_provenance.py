"""Tree digests, their comparison, package versions and the clean working-tree copy."""
import hashlib
import os
import subprocess
from pathlib import Path

import numpy
import pytest

from pipeline.core import provenance


def write(root: Path, files: dict) -> Path:
    for relpath, data in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FILES = {"a.bin": b"\x00" * 3_000_000, "sub/b.txt": b"b", "sub/deeper/c.txt": b"c", "z": b""}


def test_tree_digests_hash_every_file_by_relative_path(tmp_path):
    root = write(tmp_path / "t", FILES)
    assert provenance.tree_digests(root) == {k: hashlib.sha256(v).hexdigest() for k, v in sorted(FILES.items())}


def test_tree_digests_record_symlink_targets(tmp_path):
    """Two links to files with equal content still differ if they point at different names."""
    first = write(tmp_path / "one", {"real.txt": b"x", "else.txt": b"x"})
    second = write(tmp_path / "two", {"real.txt": b"x", "else.txt": b"x"})
    os.symlink("real.txt", first / "link.txt")
    os.symlink("else.txt", second / "link.txt")
    assert [line.split(" (")[0] for line in provenance.compare_trees(first, second)] == ["differs: link.txt"]


def test_compare_trees_names_every_difference(tmp_path):
    first = write(tmp_path / "one", FILES)
    second = write(tmp_path / "two", {**FILES, "sub/b.txt": b"B", "new.o": b"o"})
    (second / "z").unlink()
    lines = provenance.compare_trees(first, second)
    assert [line.split(" (")[0] for line in lines] == ["only in second tree: new.o", "differs: sub/b.txt",
                                                      "only in first tree: z"]
    assert provenance.compare_trees(first, write(tmp_path / "three", FILES)) == []


def test_content_sha256_of_folder_changes_with_any_file(tmp_path):
    root = write(tmp_path / "t", FILES)
    before = provenance.content_sha256(root)
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"C")
    assert provenance.content_sha256(root) != before
    with pytest.raises(ValueError, match="missing.npy"):
        provenance.content_sha256(tmp_path / "missing.npy")


def test_package_versions():
    assert provenance.package_versions(["numpy", "not-installed-xyz"]) == {
        "numpy": numpy.__version__, "not-installed-xyz": provenance.ABSENT}


def test_clone_working_tree_copies_what_git_sees_and_nothing_ignored(tmp_path):
    repo = write(tmp_path / "repo", {"tracked.py": b"t", "pkg/mod.py": b"m", "untracked.py": b"u",
                                     "build/model.pth": b"ignored", ".gitignore": b"/build/\n",
                                     "deleted.py": b"d"})
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "tracked.py", "pkg/mod.py", ".gitignore", "deleted.py"],
                   check=True)
    (repo / "deleted.py").unlink()
    (repo / "tracked.py").chmod(0o755)
    clone = provenance.clone_working_tree(repo, tmp_path / "clone")
    assert sorted(provenance.tree_digests(clone)) == [".gitignore", "pkg/mod.py", "tracked.py", "untracked.py"]
    assert (clone / "tracked.py").stat().st_mode & 0o111
