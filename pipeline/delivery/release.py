"""Release archive: every board's deliverables and the model files in one deterministic tar.gz, with a
MANIFEST.json giving each file's SHA-256, the resolved config, the git commit, tool versions and skipped steps.

Deterministic means the same files give the same archive bytes anywhere: entries sorted, mtime from
SOURCE_DATE_EPOCH (else 0), uid/gid 0 with empty owner names, modes 0644/0755, gzip header without
file name or time.

  python -m pipeline.release verify FILE_OR_DIR   re-hash a release (archive or unpacked) against its manifest
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

from pipeline.core.atomic import atomic_path
from pipeline.core.provenance import ABSENT, file_sha256, package_versions, tree_digests, tree_differences
from pipeline.core.tools import find_tool

MANIFEST = "MANIFEST.json"
ARCHIVE_SUFFIX = ".tar.gz"
# The pinned dependencies of pyproject.toml.
PYTHON_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "pillow", "jinja2", "pyyaml", "matplotlib", "tqdm",
                   "doit", "west", "markdown")
# Tool name -> command printing its version. Glow's tools are looked up under $GLOW_BIN as well as PATH.
# name: (command, the variable naming its folder, as the stages that run it look it up)
TOOLS = {
    "arm-none-eabi-gcc": (["arm-none-eabi-gcc", "--version"], "ARM_TOOLCHAIN_BIN"),
    "qemu-system-arm": (["qemu-system-arm", "--version"], "QEMU_BIN"),
    "glow model-compiler": (["model-compiler", "--version"], "GLOW_BIN"),
    "glow model-tuner": (["model-tuner", "--version"], "GLOW_BIN"),
    "glow image-classifier": (["image-classifier", "--version"], "GLOW_BIN"),
}


class ReleaseError(ValueError):
    """A release that does not match its manifest; the message names every differing file."""


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH (the reproducible-builds convention) as an int, else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds since 1970; "
                         "set it to e.g. $(git log -1 --format=%ct) or unset it")
    return int(value)


def _tool_version(command: list[str], env_var: str | None = None) -> str:
    """First line of the tool's version output that holds a digit, or ABSENT if the tool is not found."""
    executable = find_tool(command[0], env_var)
    if executable is None:
        return ABSENT
    try:
        result = subprocess.run([executable, *command[1:]], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"present, version unknown ({type(error).__name__})"
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    return next((line for line in lines if any(c.isdigit() for c in line)), "present, version unknown")


def tool_versions(python_packages=PYTHON_PACKAGES, tools=None) -> dict:
    """Versions of Python, the given packages and the external tools (TOOLS unless given); a tool or
    package that is not installed is recorded as "absent"."""
    return {
        "python": platform.python_version(),
        "packages": package_versions(python_packages),
        "tools": {name: _tool_version(*spec) for name, spec in sorted((tools or TOOLS).items())},
    }


def _git(repo_dir, *args) -> str | None:
    try:
        result = subprocess.run(["git", "--no-optional-locks", "-C", str(repo_dir), *args],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit(repo_dir) -> str:
    """HEAD's commit id, suffixed "-dirty" when tracked or untracked-but-not-ignored files differ from it;
    "unknown" when `repo_dir` is not the top of a git work tree, has no commit yet, or git is missing."""
    top = _git(repo_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(repo_dir).resolve():
        return "unknown"
    head = _git(repo_dir, "rev-parse", "--verify", "--quiet", "HEAD")
    if head is None:
        return "unknown"
    status = _git(repo_dir, "status", "--porcelain")
    return head if status == "" else f"{head}-dirty"


def _absolute_path_values(value, where: str, prefix: str):
    """Yield the places in `value` whose strings contain `prefix` (a checkout-specific absolute path)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _absolute_path_values(item, f"{where}.{key}", prefix)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _absolute_path_values(item, f"{where}[{index}]", prefix)
    elif isinstance(value, str) and prefix in value:
        yield where


def release_manifest(name: str, version: str, config: dict, repo_dir, skipped: dict[str, str],
                     python_packages=PYTHON_PACKAGES) -> dict:
    """The manifest's fixed fields (write_release adds the file digests). `skipped` maps each step that did
    not run to its reason. The config must not hold paths inside the checkout: they would differ between
    two checkouts of the same commit, so the release would too."""
    checkout = str(Path(repo_dir).resolve())
    offending = list(_absolute_path_values(config, "config", checkout))
    if offending:
        raise ValueError(f"release manifest: {', '.join(offending)} hold(s) the absolute path {checkout}; "
                         "store paths relative to the repository so releases are reproducible")
    return {
        "name": name,
        "version": version,
        "commit": git_commit(repo_dir),
        "config": config,
        "tools": tool_versions(python_packages),
        "skipped": dict(sorted(skipped.items())),
    }


def _check_arcname(arcname: str) -> str:
    path = PurePosixPath(arcname)
    if not arcname or path.is_absolute() or ".." in path.parts or str(path) != arcname or arcname == MANIFEST:
        raise ValueError(f"release file name {arcname!r} must be a plain relative path like 'rt1060/firmware.elf' "
                         f"(no leading '/', '..', './' or doubled '/'; {MANIFEST} is reserved)")
    return arcname


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_release(files: dict, manifest: dict, out_path) -> Path:
    """Write `out_path` (NAME.tar.gz) holding NAME/MANIFEST.json and NAME/<arcname> for each of `files`
    ({arcname: source path}). The manifest gets a "files" map {arcname: sha256}. Byte-for-byte deterministic."""
    out_path = Path(out_path)
    if not out_path.name.endswith(ARCHIVE_SUFFIX):
        raise ValueError(f"{out_path}: a release archive's name must end in {ARCHIVE_SUFFIX}")
    top = out_path.name[: -len(ARCHIVE_SUFFIX)]
    sources = {_check_arcname(arcname): Path(path) for arcname, path in files.items()}
    missing = [f"{arcname} ({path})" for arcname, path in sorted(sources.items()) if not path.is_file()]
    if missing:
        raise ValueError(f"release {out_path.name}: missing input files {missing}; build them first")
    manifest_data = _manifest_bytes({**manifest, "files": {a: file_sha256(p) for a, p in sorted(sources.items())}})
    mtime = source_date_epoch()

    folders = {PurePosixPath(top)} | {PurePosixPath(top, a).parent for a in sources}
    folders |= {parent for folder in folders for parent in folder.parents if parent != PurePosixPath(".")}
    members = [(folder, None) for folder in folders]
    members += [(PurePosixPath(top, MANIFEST), manifest_data)]
    members += [(PurePosixPath(top, a), path) for a, path in sources.items()]

    with atomic_path(out_path) as tmp, open(tmp, "wb") as raw:
        # filename="" keeps the temp file's name out of the gzip header; mtime=0 keeps the time out
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as compressed:
            with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, content in sorted(members, key=lambda member: member[0].parts):
                    info = tarfile.TarInfo(str(name))
                    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
                    if content is None:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    elif isinstance(content, bytes):
                        info.size, info.mode = len(content), 0o644
                        tar.addfile(info, io.BytesIO(content))
                    else:
                        info.size = content.stat().st_size
                        info.mode = 0o755 if content.stat().st_mode & 0o111 else 0o644
                        with open(content, "rb") as stream:
                            tar.addfile(info, stream)
    return out_path


def make_release(files: dict, out_path, name: str, version: str, config: dict, repo_dir,
                 skipped: dict[str, str]) -> dict:
    """release_manifest + write_release in one call (a doit stage); returns the archive path and file count."""
    manifest = release_manifest(name, version, config, repo_dir, skipped)
    write_release(files, manifest, out_path)
    return {"release": str(out_path), "files": len(files)}


def _archive_contents(path: Path) -> tuple[dict[str, str], bytes | None, list[str]]:
    """({relpath: sha256} of the files under the archive's top folder, MANIFEST.json bytes, problems)."""
    digests, manifest, problems = {}, None, []
    with tarfile.open(path, mode="r:gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.isdir():
                continue
            if not member.isfile():
                problems.append(f"unexpected non-file entry: {member.name}")
                continue
            if len(parts) < 2 or ".." in parts or member.name.startswith("/"):
                problems.append(f"entry outside the release folder: {member.name}")
                continue
            data = tar.extractfile(member).read()
            relpath = PurePosixPath(*parts[1:]).as_posix()
            if relpath == MANIFEST:
                manifest = data
            else:
                digests[relpath] = hashlib.sha256(data).hexdigest()
    return digests, manifest, problems


def _folder_contents(path: Path) -> tuple[dict[str, str], bytes | None, list[str]]:
    """The same for an unpacked release: `path` is the release folder or the folder holding it."""
    if not (path / MANIFEST).is_file():
        inner = [child for child in path.iterdir() if (child / MANIFEST).is_file()]
        if len(inner) != 1:
            return {}, None, []
        path = inner[0]
    digests = tree_digests(path)
    del digests[MANIFEST]
    return digests, (path / MANIFEST).read_bytes(), []


def verify_release(path) -> dict:
    """Re-hash a release (the .tar.gz, or its unpacked folder) against its MANIFEST.json. Returns the
    manifest; raises ReleaseError naming every missing, modified or unlisted file."""
    path = Path(path)
    if path.is_dir():
        digests, manifest_data, problems = _folder_contents(path)
    elif path.is_file():
        try:
            digests, manifest_data, problems = _archive_contents(path)
        except (tarfile.TarError, OSError, EOFError) as error:
            raise ReleaseError(f"{path}: not a readable tar.gz release ({error})") from error
    else:
        raise ReleaseError(f"{path}: no such file or folder")
    if manifest_data is None:
        raise ReleaseError(f"{path}: no {MANIFEST} found; is this a release made by pipeline.release?")
    try:
        manifest = json.loads(manifest_data)
        listed = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as error:
        raise ReleaseError(f"{path}: {MANIFEST} is unreadable ({error})") from error
    problems += tree_differences(listed, digests, names=(MANIFEST, "release"))
    if problems:
        raise ReleaseError(f"{path} does not match its {MANIFEST}:\n  " + "\n  ".join(problems))
    return manifest


def verify_release_stage(path) -> None:
    """verify_release for `doit verify_release`, printing what was checked."""
    manifest = verify_release(path)
    print(f"{path}: OK, {len(manifest['files'])} files match {MANIFEST} (commit {manifest.get('commit')})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.release", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="re-hash a release against its manifest")
    verify.add_argument("release", type=Path, help="the .tar.gz or its unpacked folder")
    args = parser.parse_args(argv)
    try:
        verify_release_stage(args.release)
    except ReleaseError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
