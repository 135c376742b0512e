"""The console summary at the end of a doit run: what ran, what the step cache restored, what was skipped and
why (the skip records the run left), how long it took and where the report is."""
import re

from conftest import run_doit

SMOKE = "config=configs/smoke.toml"


def summary_of(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run summary: "))
    return lines[start:]


def listed(summary: list[str], outcome: str) -> set[str]:
    line = next((l for l in summary if l.startswith(f"  {outcome}: ")), None)
    return set(line.split(": ", 1)[1].split(", ")) if line else set()


def test_summary_of_a_no_op_run_lists_every_skip_with_its_record(smoke_copy):
    tree, env = smoke_copy
    summary = summary_of(run_doit(tree, SMOKE, env=env).stdout)
    assert re.match(r"run summary: \d+\.\d s; 0 ran, 0 restored from the step cache, \d+ up to date, 0 failed, "
                    r"\d+ skipped$", summary[0])
    records = sorted((tree / "build").glob("*/skipped/*.txt"))
    assert records, "the smoke build skips the HiFi4 steps and the vendor builds"
    expected = {f"  skipped {record.stem}:{record.parent.parent.name}: {record.read_text().strip()}"
                for record in records if record.stem != "bundle_object"}
    # bundle:<board> runs its sources and skips only the object: it is listed under its task name
    expected |= {f"  skipped bundle:{record.parent.parent.name}: {record.read_text().strip()}"
                 for record in records if record.stem == "bundle_object"}
    assert {line for line in summary if line.startswith("  skipped ")} == expected
    assert f"{len(expected)} skipped" in summary[0]
    assert summary[-1] == "  report: build/report.html, build/report.md"


def test_summary_names_what_ran_and_what_the_cache_restored(smoke_copy, smoke_build_cache):
    tree, env = smoke_copy
    (tree / "build" / "report.html").unlink()
    (tree / "build" / "model" / "cifar.pth").unlink()
    result = run_doit(tree, SMOKE, env={**env, "PIPELINE_CACHE_DIR": str(smoke_build_cache)})
    summary = summary_of(result.stdout)
    assert "train: cache hit" in result.stdout
    assert listed(summary, "restored from the step cache") == {"train"}
    assert listed(summary, "ran") == {"report"}  # the restored .pth is byte-identical: nothing else reruns
    total = float(re.match(r"run summary: (\d+\.\d) s", summary[0]).group(1))
    timed = dict(re.fullmatch(r"(\S+) (\d+\.\d) s", entry).groups() for entry in listed(summary, "slowest"))
    assert set(timed) == {"train", "report"} and all(0 <= float(seconds) <= total for seconds in timed.values())
