"""A clean tree stays clean: installing the project the way the bootstrap does, and building it, leave
`git status` empty, so a release cut from a fresh clone records its commit without "-dirty"."""
import subprocess
import sys

from conftest import copy_project
from pipeline.delivery.release import git_commit


def git(tree, *args) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, text=True).stdout


def commit_all(tree) -> None:
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "fresh clone")


def test_the_bootstraps_editable_install_leaves_git_status_clean(tmp_path):
    tree = copy_project(tmp_path / "clone")
    commit_all(tree)
    # as the Makefile's bootstrap, with build isolation (setuptools writes its egg-info into the tree), into a
    # throwaway prefix instead of the virtualenv
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "-e", str(tree), "--prefix", str(tmp_path / "prefix")], check=True, cwd=tree)
    assert git(tree, "status", "--porcelain") == ""
    assert not git_commit(tree).endswith("-dirty")


def test_a_build_writes_nothing_git_would_see(smoke_copy, tmp_path):
    """The built smoke tree holds exactly the files of a fresh clone outside what .gitignore leaves out."""
    built, _ = smoke_copy
    fresh = copy_project(tmp_path / "fresh")
    listing = ("ls-files", "--others", "--exclude-standard")
    for tree in (fresh, built):
        git(tree, "init", "-q")
    assert (built / "build" / "report.md").is_file()
    assert git(built, *listing) == git(fresh, *listing)
