"""Ground truth for the dependency test: what each task of a dodo.py really reads when it runs.

    python tests/audit_tasks.py dump TASKS.pkl [doit variables, e.g. config=configs/smoke.toml]
        (in a project tree) every task with targets: its name, file_dep, targets, python-actions and the code and
        input files of the cache keys its cached actions compute
    python tests/audit_tasks.py run TASKS.pkl TASK OUT.json
        runs TASK's actions in this fresh process under an audit hook (sys.addaudithook) and writes what they
        imported, opened for reading and handed to other programs
    python tests/audit_tasks.py settings OUT.json [--cpu-flags=FLAG,...] CONFIG.toml...
        (in a project tree, declaring only: nothing is built or locked) for each config file, every task's
        config dependency: {config: {task: {"config_changed": the values doit compares, "cache_key": the settings
        in its step-cache key, or null}}}; with --cpu-flags, as declared on a CPU with only those flags (what
        pipeline.model.numerics reads from /proc/cpuinfo)

Run in a fresh process per task, before anything of the project is imported, so every module a task uses fires
its import event while the task runs. Nothing here imports the project before the hook is installed.
"""
import json
import os
import pickle
import sys


def dump(out_path, doit_vars):
    from doit import doit_cmd, loader
    from doit.action import PythonAction

    doit_cmd.reset_vars()
    for item in doit_vars:
        key, _, value = item.partition("=")
        doit_cmd.set_var(key, value)
    import dodo

    tasks = []
    for task in loader.load_tasks(vars(dodo), command_names=()):
        if not task.targets:
            continue  # no artifact to go stale (verify_release, cache_key, group tasks)
        actions = [(action.py_callable, action.args, action.kwargs) for action in task.actions
                   if isinstance(action, PythonAction)]
        cache_keys = [{"code": list(args[2]), "inputs": list(args[4])} for function, args, _ in actions
                      if function.__name__ == "run_cached_action"]
        # actions pickled apart, so running one task unpickles (and imports) only what that task runs
        tasks.append({"name": task.name, "file_dep": sorted(task.file_dep), "targets": list(task.targets),
                      "actions": pickle.dumps(actions), "cache_keys": cache_keys})
    with open(out_path, "wb") as f:
        pickle.dump(tasks, f)


def settings(out_path, config_paths, cpu_flags=None):
    import runpy

    from doit import doit_cmd, loader
    from doit.action import PythonAction

    import pipeline.core.tasks
    from pipeline.model import numerics

    pipeline.core.tasks.hold_build_lock = lambda build_dir: None  # declaring only: several configs, no builds
    if cpu_flags is not None:
        numerics.cpu_flags = lambda: frozenset(cpu_flags)
    result = {}
    for config_path in config_paths:
        doit_cmd.reset_vars()
        doit_cmd.set_var("config", config_path)
        tasks = loader.load_tasks(runpy.run_path("dodo.py"), command_names=())
        result[config_path] = {task.name: {
            "config_changed": [check.config for check, _, _ in task.uptodate if hasattr(check, "config")],
            "cache_key": next((action.args[3] for action in task.actions if isinstance(action, PythonAction)
                               and action.py_callable.__name__ == "run_cached_action"), None),
        } for task in tasks if task.actions}
    with open(out_path, "w") as f:
        json.dump(result, f, default=str)


def run(tasks_path, name, out_path):
    imported, opened, programs = [], set(), []

    def hook(event, args):
        if event == "import":
            imported.append(args[0])
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            writing = (mode and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writing:
                opened.add(os.path.abspath(os.fsdecode(path)))
        elif event == "subprocess.Popen":
            _, argv, cwd, _ = args
            programs.append({"argv": [os.fsdecode(a) for a in argv], "cwd": os.path.abspath(cwd or ".")})

    sys.addaudithook(hook)
    with open(tasks_path, "rb") as f:
        task = next(t for t in pickle.load(f) if t["name"] == name)
    failures = []
    for function, args, kwargs in pickle.loads(task["actions"]):
        outcome = function(*args, **kwargs)
        if outcome is False or type(outcome).__name__ == "TaskFailed":
            failures.append(str(outcome))
    modules = sorted({getattr(sys.modules.get(m), "__file__", None) or "" for m in imported} - {""})
    with open(out_path, "w") as f:
        json.dump({"modules": modules, "opened": sorted(opened), "programs": programs, "failures": failures}, f)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())  # the project tree being audited, not the one this script lives in
    if sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "settings":
        flags = [arg.partition("=")[2].split(",") for arg in sys.argv[3:] if arg.startswith("--cpu-flags=")]
        settings(sys.argv[2], [arg for arg in sys.argv[3:] if not arg.startswith("--cpu-flags=")],
                 flags[0] if flags else None)
    else:
        run(*sys.argv[2:5])
