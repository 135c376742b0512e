"""The small vocabulary dodo.py declares tasks with: stage actions, stage code dependencies, config deps."""
import importlib
import sys
import traceback
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.tools import config_changed

from pipeline.config import ROOT


def code(*modules: str) -> list[str]:
    """The source files of the pipeline modules a stage runs, so editing them reruns it (doit alone would not)."""
    # Relative to the project root (doit's working folder), so a copied tree keeps its up-to-date state.
    return [f"pipeline/{module}.py" if (ROOT / "pipeline" / f"{module}.py").exists() else module
            for module in modules]


def keys(subset: dict):
    """doit up-to-date check on exactly the config keys a task uses."""
    return config_changed(subset)


def _call(target, kwargs):
    from pipeline.tools import Skipped

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
    return result if isinstance(result, dict) else None


def stage(target: str, **kwargs):
    """A doit python-action calling pipeline.<module>.<function>(**kwargs) for target "module:function".

    Modules are imported only when the task runs, so a no-op `doit` never pays for importing torch.
    Our errors become a one-paragraph failure, not a traceback."""
    return (_call, (target, kwargs))


def paths(*items) -> list[str]:
    return [str(Path(p)) for p in items]
