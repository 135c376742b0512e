"""The console summary at the end of every `doit` run: which tasks ran, were restored from the step cache, were
up to date, skipped (with the reason) or failed, how long the run and its slowest tasks took, and where the report
is.

doit takes it as DOIT_CONFIG["reporter"] = RunSummaryReporter. It keeps doit's usual lines (".  task" for a task
that runs, "-- task" for one up to date) and adds the summary after them."""
import time
from pathlib import Path

from doit.reporter import ConsoleReporter

SLOWEST_SHOWN = 5  # tasks listed with their time: where a run's time went
REPORT_TASK = "report"  # the task whose .html target is the report
STARTED = time.monotonic()  # dodo.py imports this first thing: the run's time includes loading the graph


def skip_records(task) -> dict[str, str]:
    """{record: reason} of the skip records among the task's targets (<build>/<board>/skipped/<step>.txt, see
    pipeline.core.tasks.skipped_task) that exist after the run."""
    records = (Path(target) for target in task.targets if Path(target).parent.name == "skipped")
    return {str(record): record.read_text(encoding="utf-8").strip() for record in records if record.is_file()}


class RunSummaryReporter(ConsoleReporter):
    desc = "console output, then a summary of the run"

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.outcomes: dict[str, list[str]] = {"ran": [], "restored from the step cache": [], "up to date": [],
                                               "failed": []}
        self.skipped: dict[str, str] = {}
        self.report: list[str] = []
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # of each task that ran or was restored

    def _shown(self, task) -> bool:
        return bool(task.actions) and not task.name.startswith("_")

    def _note_skips(self, task) -> bool:
        reasons = list(skip_records(task).values())
        if isinstance(task.values, dict) and "skipped" in task.values:
            reasons.append(task.values["skipped"])
        if reasons:
            self.skipped[task.name] = "; ".join(dict.fromkeys(reasons))
        if task.name == REPORT_TASK:
            self.report = [target for target in task.targets if Path(target).is_file()]
        return bool(reasons)

    def execute_task(self, task):
        super().execute_task(task)
        self.started[task.name] = time.monotonic()

    def add_success(self, task):
        super().add_success(task)
        if self._shown(task) and not self._note_skips(task):
            restored = isinstance(task.values, dict) and task.values.get("cache") == "hit"
            self.outcomes["restored from the step cache" if restored else "ran"].append(task.name)
            self.seconds[task.name] = time.monotonic() - self.started[task.name]

    def skip_uptodate(self, task):
        super().skip_uptodate(task)
        if self._shown(task) and not self._note_skips(task):
            self.outcomes["up to date"].append(task.name)

    def add_failure(self, task, fail):
        super().add_failure(task, fail)
        self.outcomes["failed"].append(task.name)

    def summary_lines(self, seconds: float) -> list[str]:
        counts = ", ".join(f"{len(names)} {outcome}" for outcome, names in self.outcomes.items())
        lines = [f"run summary: {seconds:.1f} s; {counts}, {len(self.skipped)} skipped"]
        for outcome in ("ran", "restored from the step cache", "failed"):
            if self.outcomes[outcome]:
                lines.append(f"  {outcome}: {', '.join(self.outcomes[outcome])}")
        slowest = sorted(self.seconds.items(), key=lambda item: -item[1])[:SLOWEST_SHOWN]
        if slowest:
            lines.append(f"  slowest: {', '.join(f'{name} {seconds:.1f} s' for name, seconds in slowest)}")
        lines += [f"  skipped {name}: {reason}" for name, reason in sorted(self.skipped.items())]
        if self.report:
            lines.append(f"  report: {', '.join(sorted(self.report, key=lambda path: not path.endswith('.html')))}")
        return lines

    def complete_run(self):
        super().complete_run()
        self.write("\n".join(self.summary_lines(time.monotonic() - STARTED)) + "\n")
