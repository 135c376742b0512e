"""Messy input, failing tools and interruptions, end to end through `doit` on a built smoke tree: each case checks
the message the user sees and that no valid artifact was damaged or falsely marked up to date."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_project, executed, run_doit

SMOKE = "config=configs/smoke.toml"


# ------------------------------------------------------------------------------------------------------- helpers
def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (doit's own database and lock left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".doit.")}


def temp_files(build: Path) -> list[str]:
    """Leftovers of atomic writes (.<name>.<random>.tmp files or folders)."""
    return sorted(str(p.relative_to(build)) for p in build.rglob(".*.tmp"))


def statuses(tree: Path, env: dict, config: str = SMOKE) -> dict[str, str]:
    """{task: "R" (would run) or "U" (up to date)} as `doit list --status` reports it."""
    out = run_doit(tree, "list", config, "--all", "--status", env=env).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines() if line[:2] in ("R ", "U ")}


def start_doit(tree: Path, *args: str, env: dict, log: Path) -> subprocess.Popen:
    """doit in its own process group (as a shell runs it), output to log.out / log.err. SIGINT gets its default
    action back: a suite started in the background (`make test &`) passes SIGINT on as ignored, and a terminal's
    Ctrl-C, which these tests imitate, reaches a process that does not ignore it."""
    return subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=tree, env={**os.environ, **env},
                            stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"),
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"doit ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def interrupt(proc: subprocess.Popen, sig: int, group: bool = True) -> int:
    """Send sig to doit's whole process group (what Ctrl-C in a terminal does), or to doit alone (what `kill`
    does), and wait for it to end."""
    (os.killpg if group else os.kill)(proc.pid, sig)
    return proc.wait(timeout=60)


def interrupted_cleanly(log: Path) -> None:
    """What the user sees after Ctrl-C or `kill`: one line, no traceback."""
    err = log.with_suffix(".err").read_text()
    assert "Traceback" not in err and err.rstrip().splitlines()[-1].startswith("interrupted: the running step"), err


def cache_is_sound(env: dict) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.core.cache", "check"], env={**os.environ, **env},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def failure_text(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, f"doit should have failed:\n{result.stdout}\n{result.stderr}"
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def tool_bins(tmp_path_factory) -> dict[str, Path]:
    """Folders to run doit with: PATHs missing the Arm toolchain or QEMU (symlinks to everything else), and fake
    tools that fail, print garbage, hang, or stall a link until interrupted."""
    root = tmp_path_factory.mktemp("bins")
    path_dirs = [Path(d) for d in os.environ["PATH"].split(os.pathsep) if d and Path(d).is_dir()]
    for name, excluded in (("no_arm", ("arm-none-eabi-", "qemu-system-")), ("no_qemu", ("qemu-system-",))):
        folder = root / name
        folder.mkdir()
        for directory in path_dirs:
            for tool in directory.iterdir():
                if not tool.name.startswith(excluded) and not (folder / tool.name).exists():
                    (folder / tool.name).symlink_to(tool)
    scripts = {
        "failing_gcc/arm-none-eabi-gcc": 'echo "arm-none-eabi-gcc: internal compiler error: Segmentation fault" >&2\n'
                                         "exit 1\n",
        "garbage_qemu/qemu-system-arm": 'echo "@@ garbage \\001\\002 not a console" >&2\nexit 0\n',
        "hanging_qemu/qemu-system-arm": "exec sleep 300\n",
        # Compiles for real; a link (the only call with --specs) marks that it started, then waits to be interrupted.
        "slow_link/arm-none-eabi-gcc": 'case "$*" in *--specs=nano.specs*) touch "$0.linking"; exec sleep 300;; esac\n'
                                       f'exec {shutil.which("arm-none-eabi-gcc")} "$@"\n',
    }
    for relative, body in scripts.items():
        script = root / relative
        script.parent.mkdir(exist_ok=True)
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
    for tool in Path(shutil.which("arm-none-eabi-gcc")).parent.glob("arm-none-eabi-*"):
        if not (root / "slow_link" / tool.name).exists():
            (root / "slow_link" / tool.name).symlink_to(tool)
    return {name: root / name for name in ("no_arm", "no_qemu", "failing_gcc", "garbage_qemu", "hanging_qemu",
                                            "slow_link")}


# ------------------------------------------------------------------------------------------ Ctrl-C and kill
def test_ctrl_c_during_training_keeps_the_old_model_and_the_next_run_resumes(smoke_copy, tmp_path):
    tree, env = smoke_copy
    build = tree / "build"
    before = snapshot(build / "model")
    edit(tree / "configs" / "smoke.toml", "epochs = 1", "epochs = 2")
    doit = start_doit(tree, SMOKE, "train", env=env, log=tmp_path / "train")
    wait_for((build / "model" / "checkpoint.pt").exists, doit, "the first epoch's checkpoint")
    assert interrupt(doit, signal.SIGINT) == -signal.SIGINT
    interrupted_cleanly(tmp_path / "train")

    after = snapshot(build / "model")
    assert after.pop("checkpoint.pt") and after == before, "the interrupted step changed a finished target"
    assert temp_files(build) == []
    status = statuses(tree, env)
    assert status["train"] == "R" and status["dataset"] == status["export"] == "U"

    resumed = run_doit(tree, SMOKE, "train", env=env)
    assert "resuming from" in resumed.stderr and "after epoch" in resumed.stderr
    assert executed(resumed) == {"train"}
    assert (build / "model" / "cifar.pth").read_bytes() != b"" and not (build / "model" / "checkpoint.pt").exists()
    assert executed(run_doit(tree, SMOKE, "train", env=env)) == set()
    cache_is_sound(env)


def test_kill_during_tuning_leaves_the_old_profile_and_only_tuning_reruns(smoke_copy, tmp_path):
    tree, env = smoke_copy
    quant = tree / "build" / "quant"
    before = snapshot(quant)
    (tree / "configs" / "smoke.toml").write_text((tree / "configs" / "smoke.toml").read_text()
                                                 + "\n[quantization]\ntarget_accuracy = 0.99\n")
    doit = start_doit(tree, SMOKE, "tune", env=env, log=tmp_path / "tune")
    wait_for(lambda: "tuning profile:" in (tmp_path / "tune.err").read_text(), doit, "tuning to start")
    assert interrupt(doit, signal.SIGKILL) == -signal.SIGKILL

    assert snapshot(quant) == before
    status = statuses(tree, env)
    assert status["tune"] == "R"
    assert status["profile"] == status["accuracy"] == status["bundle:rt1060"] == "U"
    cache_is_sound(env)
    assert executed(run_doit(tree, SMOKE, "tune", env=env)) == {"tune"}
    assert executed(run_doit(tree, SMOKE, "tune", env=env)) == set()
    cache_is_sound(env)


@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "kill"])
def test_interrupted_firmware_link_leaves_no_partial_elf(smoke_copy, tmp_path, tool_bins, sig, group):
    tree, env = smoke_copy
    board = tree / "build" / "rt1060"
    elf = (board / "firmware.elf").read_bytes()
    (tree / "mcux_app" / "platform_semihost.c").write_text(
        (tree / "mcux_app" / "platform_semihost.c").read_text() + "/* an edit: the firmware is out of date */\n")
    marker = tool_bins["slow_link"] / "arm-none-eabi-gcc.linking"
    marker.unlink(missing_ok=True)
    doit = start_doit(tree, SMOKE, "firmware:rt1060", env={**env, "ARM_TOOLCHAIN_BIN": str(tool_bins["slow_link"])},
                      log=tmp_path / "link")
    wait_for(marker.exists, doit, "the link to start")
    assert temp_files(tree / "build"), "the link writes a temp file beside firmware.elf"
    assert interrupt(doit, sig, group) == -signal.SIGINT
    interrupted_cleanly(tmp_path / "link")

    assert (board / "firmware.elf").read_bytes() == elf
    assert temp_files(tree / "build") == []
    assert statuses(tree, env)["firmware:rt1060"] == "R"
    assert "firmware:rt1060" in executed(run_doit(tree, SMOKE, "firmware:rt1060", env=env))
    assert executed(run_doit(tree, SMOKE, "firmware:rt1060", env=env)) == set()


def test_two_doit_at_once_one_waits_with_a_clear_message(smoke_copy, tmp_path):
    tree, env = smoke_copy
    edit(tree / "configs" / "smoke.toml", "epochs = 1", "epochs = 1\nlr = 0.002")
    runs = [start_doit(tree, SMOKE, "train", env=env, log=tmp_path / f"run{n}") for n in (0, 1)]
    codes = [run.wait(timeout=300) for run in runs]
    assert sorted(code == 0 for code in codes) == [False, True], codes
    loser = codes.index(next(c for c in codes if c != 0))
    message = (tmp_path / f"run{loser}.err").read_text()
    assert "error: another doit (pid" in message and "build/.doit.lock" in message and "Traceback" not in message
    assert executed(run_doit(tree, SMOKE, "train", env=env)) == set(), "the database is intact and up to date"
    cache_is_sound(env)


# -------------------------------------------------------------------------------------------------- tools
def test_missing_arm_toolchain_is_an_error_with_the_install_command(smoke_copy, tool_bins):
    tree, env = smoke_copy
    bundle = tree / "build" / "rt1060" / "bundle"
    before = snapshot(bundle)
    (tree / "boards" / "rt1060.toml").write_text((tree / "boards" / "rt1060.toml").read_text() + "# edited\n")
    env = {**env, "PATH": str(tool_bins["no_arm"]), "ARM_TOOLCHAIN_BIN": ""}
    text = failure_text(run_doit(tree, SMOKE, "bundle:rt1060", env=env, check=False))
    assert "arm-none-eabi-gcc not found" in text and "ARM_TOOLCHAIN_BIN" in text
    assert "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi" in text and "make bootstrap" in text
    assert snapshot(bundle) == before
    assert not (tree / "build" / "rt1060" / "skipped" / "bundle_object.txt").exists(), "an error, not a skip"
    assert statuses(tree, env)["bundle:rt1060"] == "R"


def emulation_config(tree: Path) -> str:
    """A config that differs from the smoke one only in the emulator time limit (3 s), so emulate reruns."""
    (tree / "configs" / "emulate.toml").write_text((tree / "configs" / "smoke.toml").read_text()
                                                   + "\n[firmware]\nemulator_timeout = 3\n")
    return "config=configs/emulate.toml"


@pytest.mark.parametrize("tools, expected", [
    ("no_qemu", ["qemu-system-arm not found", "QEMU_BIN", "apt-get install qemu-system-arm"]),
    ("garbage_qemu", ["failed under mps2-an500 (exit 0)", "Command: ", "qemu-system-arm -M mps2-an500",
                      "@@ garbage"]),
    ("hanging_qemu", ["still running after 3 s under mps2-an500 (hung?)", "raise firmware.emulator_timeout"]),
])
def test_emulator_missing_failing_or_hanging_is_a_clear_failure(smoke_copy, tool_bins, tools, expected):
    tree, env = smoke_copy
    board = tree / "build" / "rt1060"
    before = {name: (board / name).read_bytes() for name in ("emulator.json", "emulator.log")}
    env = {**env, "PATH": str(tool_bins["no_qemu"]), "QEMU_BIN": ""} if tools == "no_qemu" \
        else {**env, "QEMU_BIN": str(tool_bins[tools])}
    config = emulation_config(tree)
    started = time.monotonic()
    text = failure_text(run_doit(tree, config, "emulate:rt1060", env=env, check=False))
    assert time.monotonic() - started < 60
    for words in expected:
        assert words in text, text
    assert {name: (board / name).read_bytes() for name in before} == before
    assert statuses(tree, env, config)["emulate:rt1060"] == "R"


def test_failing_compiler_shows_the_command_and_its_stderr(smoke_copy, tool_bins):
    tree, env = smoke_copy
    bundle = tree / "build" / "rt1060" / "bundle"
    before = snapshot(bundle)
    (tree / "boards" / "rt1060.toml").write_text((tree / "boards" / "rt1060.toml").read_text() + "# edited\n")
    env = {**env, "ARM_TOOLCHAIN_BIN": str(tool_bins["failing_gcc"])}
    text = failure_text(run_doit(tree, SMOKE, "bundle:rt1060", env=env, check=False))
    assert f"command failed (exit 1): {tool_bins['failing_gcc']}/arm-none-eabi-gcc" in text
    assert "-mcpu=cortex-m7" in text and "internal compiler error: Segmentation fault" in text
    assert "apt-get install gcc-arm-none-eabi" in text
    assert snapshot(bundle) == before
    assert statuses(tree, env)["bundle:rt1060"] == "R"
    del env["ARM_TOOLCHAIN_BIN"]
    assert "bundle:rt1060" in executed(run_doit(tree, SMOKE, "bundle:rt1060", env=env))
    assert snapshot(bundle) == before, "the same inputs give the same bundle once the compiler works"


# ------------------------------------------------------------------------------------------- bad input via doit
@pytest.fixture(scope="module")
def bare_tree(tmp_path_factory) -> Path:
    """A fresh copy of the project with nothing built."""
    return copy_project(tmp_path_factory.mktemp("bare"))


@pytest.mark.parametrize("toml, words", [
    ("[training]\nlearning_rate = 0.1\n", ["training.learning_rate", "valid keys", "lr"]),
    ("[training]\nepochs = \"15\"\n", ["training.epochs", "expected int"]),
    ("[training]\nlr = 0.0\n", ["training.lr", "must be > 0"]),
    ("[training]\nepochs = 0\n", ["training.epochs", ">= 1"]),
    ("[training]\nbatch_size = 0\n", ["training.batch_size", ">= 1"]),
    ("[training]\npreset = \"fast\"\n", ["training.preset", "'an13331'", "'default'"]),
    ("[firmware]\nboards = [\"rt1170\"]\n", ["unknown board 'rt1170'", "rt1060, rt685_hifi4, rt685_m33"]),
    ("[training\n", ["not valid TOML"]),
])
def test_config_errors_stop_doit_with_one_line_naming_the_key(bare_tree, toml, words):
    (bare_tree / "bad.toml").write_text(toml)
    result = run_doit(bare_tree, "config=bad.toml", check=False)
    text = failure_text(result)
    assert result.stderr.startswith("error: bad.toml: "), text
    for word in words:
        assert word in result.stderr, result.stderr
    assert not (bare_tree / "build").exists(), "nothing is built from a bad config"


def test_missing_config_file_and_dataset_source(bare_tree, tmp_path):
    result = run_doit(bare_tree, "config=nope.toml", check=False)
    assert "error: config file nope.toml does not exist" in failure_text(result)
    result = run_doit(bare_tree, SMOKE, env={"DATASET_SOURCE": str(tmp_path / "nowhere.tar.gz")}, check=False)
    assert result.stderr.startswith("error: ") and "nowhere.tar.gz does not exist" in failure_text(result)
    assert not (bare_tree / "build").exists()


def test_glow_backend_forced_but_missing(bare_tree, tmp_path):
    (bare_tree / "glow.toml").write_text('[quantization]\nbackend = "glow"\n')
    result = run_doit(bare_tree, "config=glow.toml", env={"GLOW_BIN": str(tmp_path)}, check=False)
    text = failure_text(result)
    assert result.stderr.startswith('error: quantization.backend = "glow" but model-compiler') and "GLOW_BIN" in text
    assert not (bare_tree / "build").exists()


def test_corrupt_dataset_archive_keeps_the_built_dataset(smoke_copy, tmp_path):
    tree, env = smoke_copy
    data = tree / "build" / "data"
    before = snapshot(data)
    archive = tmp_path / "cifar-copy.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)  # a gzip header, then nonsense
    env = {**env, "DATASET_SOURCE": str(archive)}
    text = failure_text(run_doit(tree, SMOKE, "dataset", env=env, check=False))
    assert "cifar-copy.tar.gz" in text and "truncated or corrupt" in text
    assert snapshot(data) == before and temp_files(tree / "build") == []
    assert statuses(tree, env)["dataset"] == "R"


def test_malformed_profile_fails_tuning_naming_the_file(smoke_copy):
    tree, env = smoke_copy
    profile = tree / "build" / "quant" / "profile.yml"
    tuned = (tree / "build" / "quant" / "profile_tuned.yml").read_bytes()
    profile.write_text("---\n- [unclosed\n")
    text = failure_text(run_doit(tree, SMOKE, "tune", env=env, check=False))
    assert "profile.yml" in text
    assert (tree / "build" / "quant" / "profile_tuned.yml").read_bytes() == tuned
    assert statuses(tree, env)["tune"] == "R"
