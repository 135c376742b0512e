"""What runs when a task runs: the stage call and the skip records. Kept apart from the declaration code
(pipeline/core/tasks.py), so a stage's code dependencies hold only what executing it imports."""
import importlib
import sys
import traceback
from pathlib import Path

from doit.exceptions import TaskFailed

from pipeline.core.atomic import write_text
from pipeline.core.tools import Skipped


def call_stage(target, kwargs):
    """Run pipeline.<module>.<function>(**kwargs) for target "module:function". A Skipped stage returns its
    reason; our errors become a one-paragraph failure, not a traceback."""
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(f"pipeline.{module}"), name)
    try:
        fn(**kwargs)
    except Skipped as skip:
        print(skip, file=sys.stderr)
        return {"skipped": skip.reason}
    except (ValueError, RuntimeError, OSError) as err:
        if not str(err):
            traceback.print_exc()
        return TaskFailed(f"{type(err).__name__}: {err}")
    return None  # stages write files; doit needs no return values


def record_skip(record, reason: str) -> None:
    print(f"skipped: {reason}", file=sys.stderr)
    write_text(record, reason + "\n")


def clear_skip(record) -> None:
    Path(record).unlink(missing_ok=True)
