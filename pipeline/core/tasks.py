"""The small vocabulary dodo.py declares tasks with: stage actions, stage code dependencies, config deps."""
import importlib
import os
import signal
import sys
import traceback
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from pipeline.core.config import ROOT


def code(*modules: str) -> list[str]:
    """The source files of the pipeline modules a stage runs, so editing them reruns it (doit alone would not)."""
    # Relative to the project root (doit's working folder), so a copied tree keeps its up-to-date state.
    return [f"pipeline/{module.replace('.', '/')}.py" for module in modules]


def keys(subset: dict):
    """doit up-to-date check on exactly the config keys a task uses."""
    return config_changed(subset)


def _call(target, kwargs):
    from pipeline.core.tools import Skipped

    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(f"pipeline.{module}"), name)
    try:
        result = fn(**kwargs)
    except Skipped as skip:
        print(skip, file=sys.stderr)
        return {"skipped": skip.reason}
    except (ValueError, RuntimeError, OSError) as err:
        if not str(err):
            traceback.print_exc()
        return TaskFailed(f"{type(err).__name__}: {err}")
    return None  # stages write files; doit needs no return values


def stage(target: str, **kwargs):
    """A doit python-action calling pipeline.<module>.<function>(**kwargs) for target "module:function".

    Modules are imported only when the task runs, so a no-op `doit` never pays for importing torch.
    Our errors become a one-paragraph failure, not a traceback."""
    return (_call, (target, kwargs))


_LOCK = None


def hold_build_lock(build_dir) -> None:
    """One doit at a time per build folder: a second one stops with a clear message instead of racing the first
    on the same targets. The lock is released by the OS when the process ends, even on a kill."""
    import fcntl

    global _LOCK
    path = Path(build_dir) / ".doit.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        sys.exit(f"error: another doit (pid {holder}) is running in this tree and holds {path}; wait for it to "
                 f"finish, or use a copy of the tree with its own build folder")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _LOCK = handle


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_interrupt(kind, value, tb, previous=sys.excepthook):
    if not issubclass(kind, KeyboardInterrupt):
        return previous(kind, value, tb)
    print("interrupted: the running step stopped before renaming its outputs into place, so finished targets are "
          "unchanged and the next doit redoes that step (training resumes from its last completed epoch)",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)  # exit as killed by SIGINT, the shell's convention for Ctrl-C


def stop_cleanly_on_interrupt() -> None:
    """Ctrl-C (SIGINT) and `kill` (SIGTERM) unwind the run normally: each stage deletes its temp files, tools it
    started are killed, doit records what finished, and the user sees one line instead of a traceback."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    sys.excepthook = _report_interrupt


def skip_reason(check, *args) -> str | None:
    """Run a cheap tool check (a require_* function) when the graph is declared: the reason a step will be
    skipped, or None when it can run. Declaring it up front keeps a skipped step's task up to date (no
    missing targets) until the reason changes, e.g. when the user installs the tool. A ToolError (a tool the
    bootstrap installs is missing) is no skip: the step runs and fails with that message."""
    from pipeline.core.tools import Skipped, ToolError

    try:
        check(*args)
    except Skipped as skip:
        return skip.reason
    except ToolError:  # no skip: the step runs and fails with the tool's message
        pass
    return None


def _record_skip(record, reason: str) -> None:
    from pipeline.core.atomic import write_text

    print(f"skipped: {reason}", file=sys.stderr)
    write_text(record, reason + "\n")


def _clear_skip(record) -> None:
    Path(record).unlink(missing_ok=True)


def skipped_task(record, reason: str, **task) -> dict:
    """A task whose step cannot run here: it writes only its skip record (never a stand-in artifact), which
    the report and the release read."""
    return {**task, "actions": [(_record_skip, (str(record), reason))], "targets": [str(record)],
            "uptodate": [keys({"skipped": reason})]}


def runnable(record, task: dict) -> dict:
    """A task that can run: it first removes the skip record an earlier, tool-less run may have left."""
    return {**task, "actions": [(_clear_skip, (str(record),)), *task["actions"]]}
