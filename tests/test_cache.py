"""The content-addressed step cache: hits, misses, damaged entries, concurrent writers, key ingredients."""
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_project, executed, run_doit, smoke_env
from pipeline.core import cache
from pipeline.core import provenance


@pytest.fixture(autouse=True)
def no_remote_from_the_shell(monkeypatch):
    """Tests choose their remote cache themselves: a developer's PIPELINE_CACHE_URL must not leak in."""
    monkeypatch.delenv("PIPELINE_CACHE_URL", raising=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(seed: int, size: int = 300_000) -> bytes:
    """Distinct, seed-determined bytes (a stand-in for a trained model)."""
    out, block = bytearray(), str(seed).encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


class Step:
    """A fake expensive step writing two outputs; counts how often it really ran."""

    def __init__(self, out_dir: Path, seed: int = 1):
        self.outputs = [out_dir / "model.pth", out_dir / "metrics.json"]
        self.contents = [payload(seed), json.dumps({"seed": seed}).encode()]
        self.runs = 0

    def __call__(self):
        self.runs += 1
        for path, data in zip(self.outputs, self.contents):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def outputs_are_right(self) -> bool:
        return all(p.read_bytes() == data for p, data in zip(self.outputs, self.contents))


@pytest.fixture
def sources(tmp_path):
    """A code file, an input file and the ingredients of a key over them."""
    code, data = tmp_path / "src" / "train.py", tmp_path / "data" / "train.npy"
    code.parent.mkdir()
    data.parent.mkdir()
    code.write_text("def train(): pass\n")
    data.write_bytes(payload(7, 1000))
    return dict(stage="train", code_files=[code], config_subset={"training": {"lr": 0.05, "epochs": 2}},
                input_files=[data], library_versions={"torch": "2.13.0", "numpy": "2.4.6"})


def entry_dir(root: Path, key: str) -> Path:
    return root / "train" / key


def test_miss_stores_then_hit_restores_without_running(tmp_path, sources):
    root = tmp_path / "cache"
    ingredients = cache.key_ingredients(**sources)
    key = cache.key_of(ingredients)
    step = Step(tmp_path / "build")
    assert cache.cached_run("train", key, step.outputs, step, log=lambda m: None, ingredients=ingredients,
                            root=root) == "miss"
    assert step.runs == 1

    manifest = json.loads((entry_dir(root, key) / cache.MANIFEST).read_text())
    assert [o["sha256"] for o in manifest["outputs"]] == [sha(c) for c in step.contents]
    assert manifest["ingredients"]["config"] == sources["config_subset"]

    for path in step.outputs:
        path.unlink()
    other_checkout = Step(tmp_path / "elsewhere" / "build")  # same names, another folder
    assert cache.cached_run("train", key, other_checkout.outputs, other_checkout, log=lambda m: None,
                            root=root) == "hit"
    assert other_checkout.runs == 0
    assert other_checkout.outputs_are_right()


def test_cache_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "ci"))
    assert cache.cache_root() == tmp_path / "ci"
    monkeypatch.delenv("PIPELINE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "an13331-pipeline"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "an13331-pipeline"


def flip_a_byte(entry: Path):
    stored = entry / cache.FILES / "0"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))


def truncate_manifest(entry: Path):
    manifest = entry / cache.MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:40])


DAMAGE = {
    "flipped byte": flip_a_byte,
    "missing file": lambda entry: (entry / cache.FILES / "1").unlink(),
    "truncated manifest": truncate_manifest,
    "no manifest (incomplete)": lambda entry: (entry / cache.MANIFEST).unlink(),
    "manifest of another key": lambda entry: (entry / cache.MANIFEST).write_text(
        (entry / cache.MANIFEST).read_text().replace(entry.name, "0" * 64)),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_entry_is_reported_ignored_and_replaced(tmp_path, sources, capsys, damage):
    root, key = tmp_path / "cache", cache.cache_key(**sources)
    first = Step(tmp_path / "a")
    cache.cached_run("train", key, first.outputs, first, log=lambda m: None, root=root)
    DAMAGE[damage](entry_dir(root, key))
    capsys.readouterr()

    second = Step(tmp_path / "b")
    assert cache.cached_run("train", key, second.outputs, second, log=lambda m: None, root=root) == "miss"
    assert second.runs == 1 and second.outputs_are_right()
    assert str(entry_dir(root, key)) in capsys.readouterr().err

    third = Step(tmp_path / "c")  # the bad entry was replaced by a good one
    assert cache.cached_run("train", key, third.outputs, third, log=lambda m: None, root=root) == "hit"
    assert third.runs == 0 and third.outputs_are_right()
    assert [p.name for p in (root / "train").iterdir()] == [key]  # no temp or moved-aside folders left


def test_entry_restores_into_renamed_outputs_of_the_same_kinds_only(tmp_path, sources, capsys):
    root, key = tmp_path / "cache", cache.cache_key(**sources)
    first = Step(tmp_path / "a")
    cache.cached_run("train", key, first.outputs, first, log=lambda m: None, root=root)
    renamed = Step(tmp_path / "b")  # a renamed project: same files under other names
    renamed.outputs = [renamed.outputs[0].with_name("other.pth"), renamed.outputs[1]]
    assert cache.cached_run("train", key, renamed.outputs, renamed, log=lambda m: None, root=root) == "hit"
    assert renamed.runs == 0 and renamed.outputs[0].read_bytes() == first.outputs[0].read_bytes()
    other_kinds = Step(tmp_path / "c")
    other_kinds.outputs = [other_kinds.outputs[0].with_suffix(".onnx"), other_kinds.outputs[1]]
    assert cache.cached_run("train", key, other_kinds.outputs, other_kinds, log=lambda m: None, root=root) == "miss"
    assert "not this step's outputs" in capsys.readouterr().err


def test_writer_in_progress_does_not_disturb(tmp_path, sources):
    """A temp folder of a writer still at work (no manifest yet) is neither used nor removed."""
    root, key = tmp_path / "cache", cache.cache_key(**sources)
    in_progress = root / "train" / f".{key}.abc123.tmp"
    (in_progress / cache.FILES).mkdir(parents=True)
    (in_progress / cache.FILES / "0").write_bytes(b"half")
    step = Step(tmp_path / "a")
    assert cache.cached_run("train", key, step.outputs, step, log=lambda m: None, root=root) == "miss"
    assert in_progress.is_dir()
    assert cache.valid_keys(root) == [("train", key)]


def test_step_that_forgets_an_output_is_an_error(tmp_path, sources):
    step = Step(tmp_path / "a")
    step.outputs.append(tmp_path / "a" / "training.png")
    with pytest.raises(ValueError, match="training.png"):
        cache.cached_run("train", cache.cache_key(**sources), step.outputs, step, log=lambda m: None,
                         root=tmp_path / "cache")
    assert cache.entries(tmp_path / "cache") == []


def test_ingredients_must_match_key(tmp_path, sources):
    step = Step(tmp_path / "a")
    with pytest.raises(ValueError, match="not computed from the ingredients"):
        cache.cached_run("train", "0" * 64, step.outputs, step, ingredients=cache.key_ingredients(**sources),
                         root=tmp_path / "cache")


def changed(sources, what: str, tmp_path: Path) -> dict:
    """`sources` with one ingredient changed."""
    new = dict(sources)
    if what == "stage":
        new["stage"] = "tune"
    elif what == "code":
        code = tmp_path / "changed" / "train.py"
        code.parent.mkdir(exist_ok=True)
        code.write_text(sources["code_files"][0].read_text() + "# tweak\n")
        new["code_files"] = [code]
    elif what == "extra code file":
        new["code_files"] = sources["code_files"] + sources["input_files"]
    elif what == "config":
        new["config_subset"] = {"training": {"lr": 0.05, "epochs": 3}}
    elif what == "input":
        data = tmp_path / "changed" / "train.npy"
        data.parent.mkdir(exist_ok=True)
        data.write_bytes(sources["input_files"][0].read_bytes()[:-1] + b"\x00")
        new["input_files"] = [data]
    elif what == "library":
        new["library_versions"] = {"torch": "2.13.1", "numpy": "2.4.6"}
    return new


@pytest.mark.parametrize("what", ["stage", "code", "extra code file", "config", "input", "library"])
def test_key_changes_with_each_ingredient(tmp_path, sources, what):
    assert cache.cache_key(**changed(sources, what, tmp_path)) != cache.cache_key(**sources)


def test_key_ignores_location_and_dict_order(tmp_path, sources):
    moved = dict(sources)
    moved["code_files"], moved["input_files"] = [], []
    for name, files in (("code_files", sources["code_files"]), ("input_files", sources["input_files"])):
        for path in files:
            copy = tmp_path / "other_checkout" / name / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
            moved[name].append(copy)
    moved["config_subset"] = {"training": {"epochs": 2, "lr": 0.05}}
    moved["library_versions"] = {"numpy": "2.4.6", "torch": "2.13.0"}
    assert cache.cache_key(**moved) == cache.cache_key(**sources)


def test_key_over_a_folder_sees_every_file(tmp_path, sources):
    folder = tmp_path / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "0.png").write_bytes(b"a")
    with_folder = dict(sources, input_files=[folder])
    before = cache.cache_key(**with_folder)
    (folder / "cat" / "1.png").write_bytes(b"b")
    assert cache.cache_key(**with_folder) != before


def test_key_refuses_values_that_are_not_plain_data(sources):
    with pytest.raises(ValueError, match="stage 'train'.*PosixPath"):
        cache.cache_key(**dict(sources, config_subset={"init_from": Path("/tmp/x.pth")}))


def test_missing_input_file_is_named(tmp_path, sources):
    with pytest.raises(ValueError, match="nothere.npy"):
        cache.cache_key(**dict(sources, input_files=[tmp_path / "nothere.npy"]))


# --- several processes at once (fork, so the workers share this module without re-importing it) ---

def _concurrent_worker(root, key, out_dir, seed, barrier, results):
    step = Step(Path(out_dir), seed)
    slow_step = lambda: (time.sleep(0.3), step())  # noqa: E731 - keep all writers inside run() together
    barrier.wait()
    status = cache.cached_run("train", key, step.outputs, slow_step, log=lambda m: None, root=root)
    results.put((out_dir, status, step.outputs_are_right()))


def run_together(count, root, key, tmp_path, wave):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count), context.Queue()
    workers = [context.Process(target=_concurrent_worker,
                               args=(root, key, str(tmp_path / wave / str(i)), 3, barrier, results))
               for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return [results.get(timeout=5) for _ in workers]


def test_concurrent_writers_leave_one_good_entry(tmp_path, sources):
    root, key = tmp_path / "cache", cache.cache_key(**sources)
    writers = run_together(5, root, key, tmp_path, "writers")
    assert all(right for _, _, right in writers)
    assert {status for _, status, _ in writers} == {"miss"}  # they all really raced
    assert [p.name for p in (root / "train").iterdir()] == [key]
    assert cache.valid_keys(root) == [("train", key)]

    readers = run_together(5, root, key, tmp_path, "readers")
    assert [(status, right) for _, status, right in readers] == [("hit", True)] * 5


# --- the command line used by CI ---

def test_keys_and_prune_commands(tmp_path, sources, capsys):
    root = tmp_path / "cache"
    old_key = cache.cache_key(**sources)
    new_key = cache.cache_key(**changed(sources, "config", tmp_path))
    for key, folder in ((old_key, "a"), (new_key, "b")):
        step = Step(tmp_path / folder)
        cache.cached_run("train", key, step.outputs, step, log=lambda m: None, root=root)

    assert cache.main(["--root", str(root), "keys"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted([f"train {old_key}", f"train {new_key}"])
    cache.main(["--root", str(root), "keys", "--digest"])
    digest_of_both = capsys.readouterr().out.strip()

    long_ago = time.time() - 3600
    os.utime(entry_dir(root, old_key) / cache.MANIFEST, (long_ago, long_ago))
    cache.main(["--root", str(root), "prune", "--unused-since", str(time.time() - 60)])
    assert cache.valid_keys(root) == [("train", new_key)]
    capsys.readouterr()
    cache.main(["--root", str(root), "keys", "--digest"])
    assert capsys.readouterr().out.strip() not in ("", digest_of_both)


def test_hit_marks_entry_used_so_prune_keeps_it(tmp_path, sources):
    root, key = tmp_path / "cache", cache.cache_key(**sources)
    step = Step(tmp_path / "a")
    cache.cached_run("train", key, step.outputs, step, log=lambda m: None, root=root)
    long_ago = time.time() - 3600
    os.utime(entry_dir(root, key) / cache.MANIFEST, (long_ago, long_ago))
    cache.cached_run("train", key, step.outputs, step, log=lambda m: None, root=root)  # a hit
    assert cache.prune(root, unused_since=time.time() - 60) == []


def test_check_command_fails_on_bad_entry(tmp_path, sources, capsys):
    root, key = tmp_path / "cache", cache.cache_key(**sources)
    step = Step(tmp_path / "a")
    cache.cached_run("train", key, step.outputs, step, log=lambda m: None, root=root)
    assert cache.main(["--root", str(root), "check"]) == 0
    flip_a_byte(entry_dir(root, key))
    assert cache.main(["--root", str(root), "check"]) == 1
    assert "does not match its sha256" in capsys.readouterr().err


# --- as a doit action, in two checkouts sharing one cache ---

DODO = '''
import os
import re
import subprocess
import sys
from pathlib import Path
from pipeline.core.cache import cached_action

def train(out):
    runs = Path(os.environ["RUN_LOG"])
    runs.write_text(runs.read_text() + "ran\\n" if runs.exists() else "ran\\n")
    if os.environ.get("FAIL"):
        return False
    Path(out).parent.mkdir(exist_ok=True)
    Path(out).write_text("trained on " + Path("input.txt").read_text())

def task_train():
    return {"actions": [cached_action("train", (train, ("build/m.pth",)), ["dodo.py"], {"lr": 0.1},
                                      ["input.txt"], ["numpy"], ["build/m.pth"])],
            "file_dep": ["input.txt"], "targets": ["build/m.pth"]}
'''


def doit_checkout(folder: Path, data: str, env: dict) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dodo.py").write_text(DODO)
    (folder / "input.txt").write_text(data)
    return subprocess.run([sys.executable, "-m", "doit", "--verbosity", "2"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cached_action_in_doit_skips_the_rerun_in_a_second_checkout(tmp_path):
    run_log = tmp_path / "runs.txt"
    env = dict(os.environ, PIPELINE_CACHE_DIR=str(tmp_path / "cache"), RUN_LOG=str(run_log),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    env.pop("FAIL", None)
    assert doit_checkout(tmp_path / "one", "cats", env).returncode == 0
    second = doit_checkout(tmp_path / "two", "cats", env)
    assert second.returncode == 0 and "cache hit" in second.stdout
    assert run_log.read_text() == "ran\n"
    assert (tmp_path / "two" / "build" / "m.pth").read_text() == "trained on cats"

    assert doit_checkout(tmp_path / "three", "dogs", env).returncode == 0  # other input: runs again
    assert run_log.read_text() == "ran\nran\n"
    assert (tmp_path / "three" / "build" / "m.pth").read_text() == "trained on dogs"


def test_failed_action_stores_nothing(tmp_path):
    env = dict(os.environ, PIPELINE_CACHE_DIR=str(tmp_path / "cache"), RUN_LOG=str(tmp_path / "runs.txt"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent), FAIL="1")
    assert doit_checkout(tmp_path / "one", "cats", env).returncode != 0
    assert cache.entries(tmp_path / "cache") == []


def test_unwritable_cache_does_not_fail_the_step(tmp_path, sources, capsys):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    step = Step(tmp_path / "a")
    assert cache.cached_run("train", cache.cache_key(**sources), step.outputs, step, log=lambda m: None,
                            root=not_a_folder) == "miss"
    assert step.outputs_are_right()
    assert "could not store" in capsys.readouterr().err


SMOKE = "config=configs/smoke.toml"


def test_fresh_clone_with_a_warm_cache_builds_every_elf_without_training(smoke_build, smoke_build_cache,
                                                                         smoke_source, tmp_path):
    clone = copy_project(tmp_path / "fresh_clone")
    env = smoke_env(smoke_source, smoke_build_cache)
    result = run_doit(clone, SMOKE, env=env)
    log = result.stdout + result.stderr
    hits = dict(re.findall(r"^(train|tune): cache hit ([0-9a-f]{16})", result.stdout, re.M))
    assert set(hits) == {"train", "tune"} and "cache miss" not in log, log[-3000:]
    assert not re.search(r"epoch \d+/\d+|tuning profile", log), "training or tuning ran despite the cache hit"

    elfs = sorted(path.relative_to(clone / "build") for path in (clone / "build").rglob("*.elf"))
    assert elfs == sorted(path.relative_to(smoke_build / "build") for path in (smoke_build / "build").rglob("*.elf"))
    differences = provenance.tree_differences(provenance.artifact_digests(smoke_build / "build"),
                                              provenance.artifact_digests(clone / "build"),
                                              names=("cold build", "warm build"))
    assert elfs and not differences, "\n".join(differences)

    # `doit cache_key` prints the keys this tree uses (the ones just hit), then the cache's entries
    printed = run_doit(clone, SMOKE, "cache_key", env=env).stdout
    current = dict(re.findall(r"^(train|tune) ([0-9a-f]{64})$", printed.split("# valid entries")[0], re.M))
    assert {stage: key[:16] for stage, key in current.items()} == hits
    assert set(current.values()) <= {key for _, key in cache.valid_keys(smoke_build_cache)}


def test_cache_key_task_says_which_inputs_are_not_built_yet(smoke_source, tmp_path):
    clone = copy_project(tmp_path / "fresh_clone")
    result = run_doit(clone, SMOKE, "cache_key", env=smoke_env(smoke_source, tmp_path / "cache"))
    assert executed(result) == {"cache_key"}
    assert re.search(r"^train - \(build/data/\w+\.npy: no such file", result.stdout, re.M), result.stdout
    assert re.search(r"^tune - \(build/\S+: no such file", result.stdout, re.M), result.stdout
