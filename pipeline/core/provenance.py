"""What identifies a build's files: SHA-256 of files and whole trees, installed package versions, and a
copy of the working tree for checking that two builds in different folders come out byte-identical."""
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

ABSENT = "absent"
_CHUNK = 1 << 20


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(root) -> dict[str, str]:
    """{posix path relative to `root`: sha256} for every file below `root`, sorted by path.
    A symlink is recorded by its target text, so a link that points elsewhere counts as a difference."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory; tree_digests needs the folder whose files to hash")
    digests = {}
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names) + [d for d in subfolders if Path(folder, d).is_symlink()]:
            path = Path(folder, name)
            relpath = path.relative_to(root).as_posix()
            if path.is_symlink():
                digests[relpath] = "symlink:" + hashlib.sha256(os.readlink(path).encode()).hexdigest()
            else:
                digests[relpath] = file_sha256(path)
    return dict(sorted(digests.items()))


# doit's own bookkeeping in a build folder, which legitimately differs between two builds of identical
# artifacts: its state database (dependency timestamps) and its lock file (the pid of the last doit).
DOIT_STATE = (".doit.db", ".doit.lock")


def artifact_digests(build_dir) -> dict[str, str]:
    """tree_digests of a build folder without doit's bookkeeping: what two builds must agree on byte for byte."""
    return {path: sha for path, sha in tree_digests(build_dir).items() if path not in DOIT_STATE}


def content_sha256(path) -> str:
    """sha256 of a file, or of a folder's whole tree (its sorted `relpath sha256` lines)."""
    path = Path(path)
    if path.is_dir():
        listing = "".join(f"{rel} {sha}\n" for rel, sha in tree_digests(path).items())
        return hashlib.sha256(listing.encode("utf-8")).hexdigest()
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder; build it first or fix the path")
    return file_sha256(path)


def tree_differences(first: dict[str, str], second: dict[str, str],
                     names=("first tree", "second tree")) -> list[str]:
    """One line per differing file between two {relpath: sha256} maps (e.g. from `tree_digests`), calling
    them by `names`; empty when they match."""
    lines = []
    for relpath in sorted(first.keys() | second.keys()):
        a, b = first.get(relpath), second.get(relpath)
        if a is None:
            lines.append(f"only in {names[1]}: {relpath}")
        elif b is None:
            lines.append(f"only in {names[0]}: {relpath}")
        elif a != b:
            lines.append(f"differs: {relpath} (sha256 {a[:12]}... in {names[0]}, {b[:12]}... in {names[1]})")
    return lines


def compare_trees(first_root, second_root) -> list[str]:
    """Differences between two folders, naming every differing file (for tests and benchmarks)."""
    return tree_differences(tree_digests(first_root), tree_digests(second_root))


def package_versions(names) -> dict[str, str]:
    """{name: installed version} for distribution or import names (PIL is pillow's), ABSENT when not installed."""
    versions, providers = {}, None
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            providers = importlib.metadata.packages_distributions() if providers is None else providers
            found = sorted(importlib.metadata.version(dist) for dist in providers.get(name, ()))
            versions[name] = ",".join(found) if found else ABSENT
    return versions


def clone_working_tree(repo_dir, dest) -> Path:
    """Copy the files git would see in `repo_dir` (tracked plus untracked-but-not-ignored) to `dest`,
    so a build there starts clean: no build/, caches or other ignored files. Reads git, never changes it."""
    repo_dir, dest = Path(repo_dir), Path(dest)
    listing = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(repo_dir), "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode("utf-8")
    for relpath in sorted(set(filter(None, listing.split("\0")))):
        source = repo_dir / relpath
        if not source.is_file():  # tracked but deleted in the working tree
            continue
        target = dest / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest
