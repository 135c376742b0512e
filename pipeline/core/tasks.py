"""How dodo.py declares a task: `step` builds a doit task from a stage function's name, its inputs, its outputs
and the parameters it passes, and derives the rest: the code files it depends on (pipeline/core/deps.py), the
config dependency (exactly the parameters passed), the step-cache wrapper and the skip record.
"""
import dataclasses
import os
import signal
import sys
from pathlib import Path

from doit.tools import config_changed

from pipeline.core.deps import code_files, imported_libraries
from pipeline.core.runner import call_stage, clear_skip, record_skip

RUNNER = "pipeline.core.runner"  # what runs every stage and writes skip records
CACHE = "pipeline.core.cache"    # the module that restores and stores cached steps


def stage(target: str, **kwargs):
    """A doit python-action calling pipeline.<module>.<function>(**kwargs) for target "module:function".

    Modules are imported only when the task runs, so a no-op `doit` never pays for importing torch."""
    return (call_stage, (target, kwargs))


def plain(value):
    """A parameter as JSON data, for doit's config_changed and the cache key: paths as strings (dodo.py gives
    them relative to the project root, so another checkout gets the same key), dataclasses and tuples as dicts
    and lists."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return plain({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def step_code(target: str, cached: bool = False) -> list[str]:
    """The code files a step depends on: its stage module's import closure and resources, the runner's, and the
    cache's when it is cached."""
    return list(code_files(f"pipeline.{target.partition(':')[0]}", RUNNER, *((CACHE,) if cached else ())))


def cache_name(target: str) -> str:
    """The name a stage's cache entries are filed under: its function's name without `_stage` (tune_stage ->
    tune), or for a module's generic run_stage the module's name (evaluations.parity:run_stage -> parity)."""
    module, _, function = target.partition(":")
    return module.rpartition(".")[2] if function == "run_stage" else function.removesuffix("_stage")


def step(target: str, *, inputs=(), outputs=(), cached: bool = False, skip: str | None = None, record=None,
         skip_part: bool = False, subtask: str | None = None, state: dict | None = None,
         **params) -> dict:
    """The doit task running stage `target` ("module:function" under pipeline/) with `params` as its keyword
    arguments (`subtask`: the board, for tasks declared once per board). It depends on `inputs` (files other
    tasks or the user make), on the derived code files and on the value of every parameter; it writes `outputs`.

    cached: restore the outputs from the step cache (pipeline/core/cache.py) when the same code, parameters,
    input contents and versions of the libraries the stage imports made them before (entries: cache_name).
    state: values that decide staleness without being passed (e.g. a source folder's fingerprint).
    skip/record: `skip` is the reason the step cannot run on this machine (None: it runs); a skipped step writes
    only its skip record `record`; a runnable one first removes a record an earlier, tool-less run left. With
    skip_part the stage still runs and makes `outputs`; only what it cannot make (named by the reason) waits."""
    module = f"pipeline.{target.partition(':')[0]}"
    code = step_code(target, cached)
    inputs, outputs = [str(f) for f in inputs], [str(f) for f in outputs]
    task = {"name": subtask} if subtask else {}
    if skip and not skip_part:
        return {**task, **skipped_task(record, skip), "file_dep": list(code_files(RUNNER))}
    action = stage(target, **params)
    if cached:
        from pipeline.core.cache import cached_action

        # Where inputs and outputs are does not change what they hold (the inputs count by content): a renamed
        # project or another dataset path still hits the cache. State decides the outputs too, so it counts.
        settings = {key: value for key, value in plain({**params, **(state or {})}).items()
                    if value not in outputs and value not in inputs}
        action = cached_action(cache_name(target), action, code_files=code, config_subset=settings,
                               input_files=inputs, libraries=list(imported_libraries(module, RUNNER)),
                               outputs=outputs)
    task.update({"actions": [action], "file_dep": inputs + code, "targets": outputs,
                 "uptodate": [config_changed(plain({**params, **(state or {}), "skipped": skip}))], "clean": True})
    if skip:
        return {**task, "actions": [action, (record_skip, (str(record), skip))], "targets": outputs + [str(record)]}
    return runnable(record, task) if record else task


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


def skipped_task(record, reason: str, **task) -> dict:
    """A task whose step cannot run here: it writes only its skip record (never a stand-in artifact), which
    the report and the release read."""
    return {**task, "actions": [(record_skip, (str(record), reason))], "targets": [str(record)],
            "uptodate": [config_changed({"skipped": reason})]}


def runnable(record, task: dict) -> dict:
    """A task that can run: it first removes the skip record an earlier, tool-less run may have left."""
    return {**task, "actions": [(clear_skip, (str(record),)), *task["actions"]]}
