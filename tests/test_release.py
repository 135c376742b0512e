"""Release archives: byte-identical from different folders, inspectable with GNU tar, verified against their
manifest; tool versions and the git commit recorded honestly."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

import numpy
import pytest

from conftest import executed, run_doit
from pipeline.delivery import release
from pipeline.core.provenance import file_sha256


def make_deliverables(folder: Path) -> dict:
    """A small release's files: a model, a board's firmware (executable) and its C sources."""
    files = {
        "model/cifar.pth": bytes(range(256)) * 40,
        "model/cifar.onnx": b"onnx-bytes" * 100,
        "rt1060/firmware.elf": b"\x7fELF" + bytes(2000),
        "rt1060/source/main.c": b"int main(void) { return 0; }\n",
        "rt1060/bundle/cifar.h": b"#define CIFAR_MEM_ALIGN 64\n",
        "report.md": "# Report \u2014 accuracy\n".encode("utf-8"),
    }
    sources = {}
    for arcname, data in files.items():
        path = folder / "build" / arcname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sources[arcname] = path
    os.chmod(sources["rt1060/firmware.elf"], 0o755)
    os.chmod(sources["report.md"], 0o600)  # e.g. written through a temp file
    return sources


MANIFEST_FIELDS = {"name": "cifar", "version": "0.1.0", "commit": "unknown", "config": {"training": {"lr": 0.05}},
                   "tools": {"python": "3"}, "skipped": {"rt685_hifi4/firmware": "skipped: no xt-clang"}}


def build(folder: Path) -> Path:
    return release.write_release(make_deliverables(folder), MANIFEST_FIELDS,
                                 folder / "build" / "release" / "cifar-0.1.0.tar.gz")


def test_same_files_in_two_folders_give_identical_archives(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = build(tmp_path / "checkout_one")
    monkeypatch.chdir(tmp_path)
    second = build(tmp_path / "some" / "other" / "checkout")
    assert first.read_bytes() == second.read_bytes()


def test_archive_metadata_is_fixed(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    archive = build(tmp_path).read_bytes()
    # gzip header (RFC 1952): byte 3 = flags (0x08 = a file name follows), bytes 4..7 = mtime
    assert archive[:2] == b"\x1f\x8b" and archive[3] & 0x08 == 0 and archive[4:8] == bytes(4)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert all(n == "cifar-0.1.0" or n.startswith("cifar-0.1.0/") for n in names)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(1700000000, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["cifar-0.1.0/rt1060/firmware.elf"] == 0o755
    assert modes["cifar-0.1.0/report.md"] == 0o644
    assert modes["cifar-0.1.0/rt1060"] == 0o755


def test_unset_source_date_epoch_means_time_zero(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    with tarfile.open(build(tmp_path), mode="r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_bad_source_date_epoch_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH='yesterday'"):
        build(tmp_path)


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    sources = make_deliverables(tmp_path)
    archive = release.write_release(sources, MANIFEST_FIELDS, tmp_path / "cifar-0.1.0.tar.gz")
    with tarfile.open(archive, mode="r:gz") as tar:
        manifest = json.load(tar.extractfile("cifar-0.1.0/MANIFEST.json"))
    assert manifest["files"] == {a: hashlib.sha256(p.read_bytes()).hexdigest() for a, p in sources.items()}
    assert manifest["skipped"] == MANIFEST_FIELDS["skipped"]
    assert manifest["config"] == MANIFEST_FIELDS["config"]


def gnu_tar_unpack(archive: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    return dest


def test_verify_passes_on_intact_archive_and_unpacked_folder(tmp_path):
    archive = build(tmp_path)
    assert release.verify_release(archive)["name"] == "cifar"
    unpacked = gnu_tar_unpack(archive, tmp_path / "unpacked")
    release.verify_release(unpacked)
    release.verify_release(unpacked / "cifar-0.1.0")
    assert release.main(["verify", str(archive)]) == 0


TAMPERING = {
    "modified": lambda top: (top / "rt1060/source/main.c").write_text("int main(void) { return 1; }\n"),
    "missing": lambda top: (top / "model/cifar.onnx").unlink(),
    "unlisted": lambda top: (top / "rt1060/extra.bin").write_bytes(b"x"),
}
NAMED = {"modified": "differs: rt1060/source/main.c", "missing": "only in MANIFEST.json: model/cifar.onnx",
         "unlisted": "only in release: rt1060/extra.bin"}


@pytest.mark.parametrize("how", TAMPERING)
def test_verify_names_the_tampered_file(tmp_path, capsys, how):
    unpacked = gnu_tar_unpack(build(tmp_path), tmp_path / "unpacked")
    TAMPERING[how](unpacked / "cifar-0.1.0")
    with pytest.raises(release.ReleaseError, match=NAMED[how]):
        release.verify_release(unpacked)
    # repacked with GNU tar, the archive fails the same way
    repacked = tmp_path / "repacked.tar.gz"
    subprocess.run(["tar", "-czf", str(repacked), "-C", str(unpacked), "cifar-0.1.0"], check=True)
    assert release.main(["verify", str(repacked)]) == 1
    assert NAMED[how] in capsys.readouterr().err


def test_verify_rejects_archive_without_manifest(tmp_path):
    folder = tmp_path / "not-a-release"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    archive = tmp_path / "x.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path), folder.name], check=True)
    with pytest.raises(release.ReleaseError, match="no MANIFEST.json"):
        release.verify_release(archive)


@pytest.mark.parametrize("arcname", ["/abs/file", "../up", "a/../b", "./a", "a//b", "MANIFEST.json", ""])
def test_bad_archive_names_are_refused(tmp_path, arcname):
    source = tmp_path / "f"
    source.write_text("x")
    with pytest.raises(ValueError, match="plain relative path"):
        release.write_release({arcname: source}, {}, tmp_path / "r-1.tar.gz")


def test_missing_deliverable_is_named(tmp_path):
    with pytest.raises(ValueError, match="rt1060/firmware.elf"):
        release.write_release({"rt1060/firmware.elf": tmp_path / "nope.elf"}, {}, tmp_path / "r-1.tar.gz")


def test_tool_versions_records_present_and_absent_tools(monkeypatch):
    versions = release.tool_versions(["numpy", "no-such-package-xyz"],
                                     tools={"missing tool": (["no-such-tool-xyz", "--version"], None)})
    assert versions["packages"] == {"numpy": numpy.__version__, "no-such-package-xyz": "absent"}
    assert versions["tools"] == {"missing tool": "absent"}
    if shutil.which("arm-none-eabi-gcc"):
        dumped = subprocess.run(["arm-none-eabi-gcc", "-dumpversion"], capture_output=True, text=True).stdout
        assert dumped.strip() in release.tool_versions([])["tools"]["arm-none-eabi-gcc"]


def test_glow_tools_are_found_under_glow_bin(tmp_path, monkeypatch):
    fake = tmp_path / "glow" / "model-compiler"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'LLVM (http://llvm.org/):'\necho '  LLVM version 8.0.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GLOW_BIN", str(fake.parent))
    tools = release.tool_versions([], tools={"glow": release.TOOLS["glow model-compiler"]})["tools"]
    assert tools == {"glow": "LLVM version 8.0.1"}


def git(repo: Path, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def test_git_commit_marks_unknown_and_dirty(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    assert release.git_commit(repo) == "unknown"  # not a repository
    git(repo, "init", "-q")
    assert release.git_commit(repo) == "unknown"  # no commit yet
    (repo / "a.txt").write_text("a")
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "add", "a.txt", ".gitignore")
    git(repo, "commit", "-q", "-m", "one")
    commit = release.git_commit(repo)
    assert len(commit) == 40 and int(commit, 16) >= 0
    (repo / "build").mkdir()
    (repo / "build" / "out.bin").write_text("ignored")
    assert release.git_commit(repo) == commit  # ignored build output is not "dirty"
    (repo / "new.py").write_text("untracked")
    assert release.git_commit(repo) == f"{commit}-dirty"
    (repo / "new.py").unlink()
    (repo / "a.txt").write_text("changed")
    assert release.git_commit(repo) == f"{commit}-dirty"
    assert release.git_commit(repo / "build") == "unknown"  # not the top of the work tree


def test_manifest_refuses_paths_inside_the_checkout(tmp_path):
    config = {"training": {"init_from": str(tmp_path.resolve() / "build" / "model" / "cifar.pth")}}
    with pytest.raises(ValueError, match=r"config\.training\.init_from"):
        release.release_manifest("cifar", "0.1.0", config, tmp_path, skipped={})


def test_release_manifest_fields(tmp_path):
    manifest = release.release_manifest("cifar", "0.1.0", {"dataset": {"source": "/shared/cifar.tar.gz"}},
                                        tmp_path, skipped={"b": "skipped: y", "a": "skipped: x"},
                                        python_packages=["numpy"])
    assert manifest["commit"] == "unknown"
    assert list(manifest["skipped"]) == ["a", "b"]
    assert manifest["tools"]["packages"] == {"numpy": numpy.__version__}
    assert set(manifest["tools"]["tools"]) == set(release.TOOLS)


def test_make_release_gives_a_verifiable_archive(tmp_path):
    sources = make_deliverables(tmp_path)
    out = tmp_path / "build" / "release" / "cifar-0.1.0.tar.gz"
    release.make_release(sources, out, "cifar", "0.1.0", {"project": {"name": "cifar"}}, tmp_path,
                         skipped={"rt685_hifi4/firmware": "no xt-clang (set XTENSA_TOOLS)"})
    manifest = release.verify_release(out)
    assert (manifest["name"], manifest["commit"], manifest["skipped"]) == (
        "cifar", "unknown", {"rt685_hifi4/firmware": "no xt-clang (set XTENSA_TOOLS)"})
    assert set(manifest["files"]) == set(sources)


def first_version_line(tool: str) -> str:
    found = shutil.which(tool)
    return subprocess.run([found, "--version"], capture_output=True, text=True).stdout.splitlines()[0].strip() \
        if found else "absent"


def rewrite_member(archive: Path, arcname: str, data: bytes) -> None:
    """Replace one file's bytes inside a release archive, keeping every other entry."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(member, tar.extractfile(member).read() if member.isfile() else None) for member in tar]
    with tarfile.open(archive, "w:gz") as tar:
        for member, content in members:
            if member.name.endswith("/" + arcname):
                content, member.size = data, len(data)
            tar.addfile(member, io.BytesIO(content) if content is not None else None)


def test_release_and_verify_release_tasks_on_the_smoke_build(smoke_copy):
    tree, env = smoke_copy
    smoke = "config=configs/smoke.toml"
    assert executed(run_doit(tree, smoke, "release", env=env)) == {"release"}  # the rest was built already
    build = tree / "build"
    archive, = (build / "release").glob("*.tar.gz")
    with tarfile.open(archive, "r:gz") as tar:
        manifest = json.load(tar.extractfile(f"{archive.name[:-len('.tar.gz')]}/MANIFEST.json"))

    assert manifest["files"] and all(file_sha256(build / name) == sha for name, sha in manifest["files"].items())
    elfs = {path.relative_to(build).as_posix() for path in build.glob("*/firmware.elf")}
    assert elfs and elfs <= set(manifest["files"]), "every board's firmware ELF goes into the release"
    records = {f"{path.stem}:{path.parent.parent.name}": path.read_text().strip()
               for path in build.glob("*/skipped/*.txt")}
    assert records and manifest["skipped"] == records, "the manifest lists exactly the steps the graph skipped"
    assert {name: manifest["tools"]["tools"][name] for name in ("arm-none-eabi-gcc", "qemu-system-arm")} == \
        {name: first_version_line(name) for name in ("arm-none-eabi-gcc", "qemu-system-arm")}
    assert manifest["tools"]["packages"]["numpy"] == numpy.__version__
    smoke_config = tomllib.loads((tree / "configs" / "smoke.toml").read_text())
    assert manifest["config"]["training"]["epochs"] == smoke_config["training"]["epochs"]

    verified = run_doit(tree, smoke, "verify_release", env=env)
    assert f"OK, {len(manifest['files'])} files match" in verified.stdout

    main_c = sorted(name for name in manifest["files"] if name.endswith("/source/main.c"))[0]
    rewrite_member(archive, main_c, b"int main(void) { return 1; }\n")
    failed = run_doit(tree, smoke, "verify_release", env=env, check=False)
    assert failed.returncode != 0 and f"differs: {main_c}" in failed.stdout + failed.stderr
