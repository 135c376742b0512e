"""Every stale step reruns: what each task of the smoke graph really reads when it runs (recorded by an audit hook
in a fresh process, tests/audit_tasks.py) must be among its declared dependencies and in its cache key."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, executed, run_doit, smoke_env

SMOKE = "config=configs/smoke.toml"
AUDIT = ROOT / "tests" / "audit_tasks.py"


def program_files(program: dict) -> set[Path]:
    """Files a compiler, linker or emulator was handed: path arguments, -T scripts, and every file of -I folders."""
    found = set()
    for arg in program["argv"][1:]:
        flag, value = (arg[:2], arg[2:]) if arg[:2] in ("-I", "-T") else ("", arg)
        path = Path(program["cwd"], value)
        if flag == "-I" and path.is_dir():
            found.update(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            found.add(path)
    return found


def project_files(tree: Path, record: dict, targets: set[str]) -> set[str]:
    """What a task read of the project: source files (anything outside build/) and artifacts of the graph (the
    targets of any task). A file of an image folder counts as the listing that holds that folder's digest."""
    listing = tree / "build" / "data" / "image_folders.json"
    folders = json.loads(listing.read_text())
    read = {Path(p) for p in (*record["modules"], *record["opened"])}
    read |= {f for program in record["programs"] for f in program_files(program)}
    found = set()
    for path in read:
        path = path.resolve()
        if not path.is_relative_to(tree) or not path.is_file():
            continue
        relative = path.relative_to(tree)
        if relative.parts[:2] == ("build", "data") and len(relative.parts) > 3 and relative.parts[2] in folders:
            found.add(str(listing.relative_to(tree)))
        elif relative.parts[0] != "build" or str(relative) in targets:
            found.add(str(relative))
    return found


@pytest.fixture(scope="module")
def audited(smoke_build, smoke_source, tmp_path_factory):
    """{task: (declared task, files it read)} for every task with targets, each run again in a copy of the built
    smoke tree with an empty step cache, so cached steps run too."""
    work = tmp_path_factory.mktemp("audit")
    tree = work / "tree"
    shutil.copytree(smoke_build, tree, symlinks=True)
    tree = tree.resolve()
    env = {**os.environ, **smoke_env(smoke_source, work / "empty-cache")}
    subprocess.run([sys.executable, AUDIT, "dump", work / "tasks.pkl", SMOKE], cwd=tree, env=env, check=True)
    tasks = pickle.loads((work / "tasks.pkl").read_bytes())
    all_targets = {t for task in tasks for t in task["targets"]}
    result = {}
    for task in tasks:
        out = work / f"{task['name'].replace(':', '_')}.json"
        done = subprocess.run([sys.executable, AUDIT, "run", work / "tasks.pkl", task["name"], out], cwd=tree,
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{task['name']} failed under the audit:\n{done.stderr[-3000:]}"
        record = json.loads(out.read_text())
        assert not record["failures"], f"{task['name']} failed under the audit: {record['failures']}"
        result[task["name"]] = (task, project_files(tree, record, all_targets))
    # every step reran in place and rewrote the same bytes, so doit still finds the tree up to date
    assert executed(run_doit(tree, SMOKE, env=env)) == set()
    return result


def test_every_file_a_task_reads_is_a_declared_dependency(audited):
    undeclared = {name: sorted(read - set(task["file_dep"]) - set(task["targets"]))
                  for name, (task, read) in audited.items()}
    undeclared = {name: files for name, files in undeclared.items() if files}
    assert not undeclared, "tasks read files they do not depend on:\n" + "\n".join(
        f"  {name}: {files}" for name, files in undeclared.items())
    # the audit saw real work: the stages' own modules and the C kernels handed to the compiler
    assert "pipeline/model/train.py" in audited["train"][1]
    assert any(f.startswith("pipeline/int8/kernels/") for f in audited["accuracy"][1])


def test_every_file_a_cached_step_reads_is_in_its_cache_key(audited):
    cached = {name: (task, read) for name, (task, read) in audited.items() if task["cache_keys"]}
    assert {"train", "tune"} <= set(cached)
    for name, (task, read) in cached.items():
        for key in task["cache_keys"]:
            missing = sorted(read - set(key["code"]) - set(key["inputs"]) - set(task["targets"]))
            assert not missing, f"{name}: its cache key leaves out files it reads: {missing}"


def test_the_model_steps_do_not_depend_on_where_other_artifacts_live_or_how_they_are_built():
    """Training must not rerun (nor miss the step cache) when a later stage or the artifact layout changes: the
    dataset, training and export closures hold no layout, int8, firmware or evaluation code (training draws its
    curves with delivery/plots.py, which it does depend on)."""
    from pipeline.core.tasks import step_code

    later = ("pipeline/core/layout.py", "pipeline/int8/", "pipeline/firmware/", "pipeline/evaluations/")
    for target in ("model.dataset:build_dataset", "model.distill:teacher", "model.train:train", "model.export:export"):
        code = step_code(target, cached=True)
        assert not [path for path in code if path.startswith(later)], target
