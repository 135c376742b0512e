"""How much the step cache saves: for each config, a cold build in a fresh clone with an empty cache, a no-op
`doit` over the finished graph, and builds in other fresh clones with the now warm cache (no retraining;
`--warm-runs N` of them, median printed). Also checks that the warm builds' artifacts are byte-identical to the
cold one's, and prints each build's slowest tasks (from the run summary).

With `--remote`, the cache is the remote tier: an nginx WebDAV server started on 127.0.0.1 for the run
(PIPELINE_CACHE_URL); each clone has its own empty local cache folder, so the cold build publishes and the warm
one downloads. It also prints the volume uploaded and downloaded (request and response bodies in nginx's log).

  python benchmarks/cache_speedup.py                       # configs/smoke.toml and pipeline.toml
  python benchmarks/cache_speedup.py --config configs/smoke.toml --dataset-source /path/to/cifar
  python benchmarks/cache_speedup.py --config configs/smoke.toml --remote
  python benchmarks/cache_speedup.py --config pipeline.toml --remote --warm-runs 3
"""
import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cache_servers import nginx_webdav  # noqa: E402
from pipeline.core import provenance  # noqa: E402
from pipeline.model.dataset import resolve_source  # noqa: E402

def timed_doit(clone: Path, config: str, tasks: list[str], env: dict) -> tuple[float, str]:
    """Seconds the doit run took, and its stdout."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "doit", f"config={config}", *tasks], cwd=clone, env=env,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        sys.exit(f"doit config={config} failed in {clone} (exit {result.returncode}):\n{tail}")
    return elapsed, result.stdout


def measure(config: str, tasks: list[str], env: dict, workdir: Path, server=None, warm_runs: int = 1) -> dict:
    """Cold, no-op and `warm_runs` warm builds (each in its own fresh clone); with `server` (a
    tests/cache_servers.WebDav), through its remote tier, each warm clone with its own empty local cache."""
    cold_env = dict(env, PIPELINE_CACHE_DIR=str(workdir / "cache"))
    if server is not None:
        url = server.url(f"cache/{workdir.name}")
        cold_env = dict(env, PIPELINE_CACHE_DIR=str(workdir / "cold-cache"), PIPELINE_CACHE_URL=url)
    # Every clone now, so all builds see the same tree even if the checkout changes during the benchmark.
    cold_clone = provenance.clone_working_tree(REPO, workdir / "cold")
    warm_clones = [provenance.clone_working_tree(REPO, workdir / f"warm-{run}") for run in range(warm_runs)]
    print(f"[{config}] cold build (empty cache) ...", file=sys.stderr, flush=True)
    cold, cold_log = timed_doit(cold_clone, config, tasks, cold_env)
    print(f"[{config}] cold {slowest(cold_log)}", file=sys.stderr)
    uploaded = server.transferred() if server is not None else (0, 0)
    print(f"[{config}] no-op build ...", file=sys.stderr, flush=True)
    noop, _ = timed_doit(cold_clone, config, tasks, cold_env)
    cold_files = provenance.artifact_digests(cold_clone / "build")
    warm, differences = [], []
    before_warm = server.transferred() if server is not None else (0, 0)
    for run, warm_clone in enumerate(warm_clones):
        print(f"[{config}] warm build {run + 1}/{warm_runs} (fresh clone, "
              f"{'empty local cache, warm remote' if server else 'warm cache'}) ...", file=sys.stderr, flush=True)
        warm_env = cold_env if server is None else dict(cold_env, PIPELINE_CACHE_DIR=str(workdir / f"warm-cache-{run}"))
        seconds, warm_log = timed_doit(warm_clone, config, tasks, warm_env)
        warm.append(seconds)
        print(f"[{config}] warm {seconds:.1f} s, {slowest(warm_log)}", file=sys.stderr)
        warm_files = provenance.artifact_digests(warm_clone / "build")
        differences = provenance.tree_differences(cold_files, warm_files, names=("cold build", "warm build"))
        for line in differences:
            print(f"[{config}] {line}", file=sys.stderr)
        if differences:
            break
    after_warm = server.transferred() if server is not None else (0, 0)
    hits = sorted(re.findall(r"^(\w+): cache hit", warm_log, re.M))
    return dict(config=config, cold=cold, warm=statistics.median(warm), warm_runs=warm, noop=noop,
                files=len(warm_files), hits=",".join(hits) or "none",
                identical="yes" if not differences else f"NO ({len(differences)} files)",
                cold_up=uploaded[0], cold_down=uploaded[1],
                warm_up=(after_warm[0] - before_warm[0]) / len(warm),
                warm_down=(after_warm[1] - before_warm[1]) / len(warm))


def slowest(log: str) -> str:
    """The run summary's line of the slowest tasks."""
    return next((line.strip() for line in log.splitlines() if line.strip().startswith("slowest: ")), "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="config file (repeatable); "
                        "default: configs/smoke.toml and pipeline.toml")
    parser.add_argument("--task", action="append", default=[], help="doit task(s) to run (default: doit's defaults)")
    parser.add_argument("--dataset-source", help="DATASET_SOURCE for the clones (default: $DATASET_SOURCE, else "
                        "what dataset.source='auto' finds from this checkout, since git-ignored data is not cloned)")
    parser.add_argument("--warm-runs", type=int, default=1, help="warm builds, each in a fresh clone (the median "
                        "is printed, and each run)")
    parser.add_argument("--keep", action="store_true", help="keep the temp clones and cache")
    parser.add_argument("--remote", action="store_true", help="go through a remote cache (nginx WebDAV on "
                        "127.0.0.1) with an empty local cache per clone; also prints the transferred volume")
    args = parser.parse_args()

    source = args.dataset_source or os.environ.get("DATASET_SOURCE") or resolve_source("auto", REPO)
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_CACHE_DIR", "SOURCE_DATE_EPOCH")}
    env["DATASET_SOURCE"] = source
    print(f"dataset source: {source}", file=sys.stderr)

    rows = []
    server_dir = Path(tempfile.mkdtemp(prefix="cache-speedup-server-"))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(nginx_webdav(server_dir)) if args.remote else None
        for config in args.config or ["configs/smoke.toml", "pipeline.toml"]:
            workdir = Path(tempfile.mkdtemp(prefix="cache-speedup-"))
            try:
                rows.append(measure(config, args.task, env, workdir, server, args.warm_runs))
            finally:
                if args.keep:
                    print(f"kept {workdir}", file=sys.stderr)
                else:
                    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(server_dir, ignore_errors=True)

    print(f"{'config':<22} {'cold s':>9} {'warm s':>9} {'warm/cold':>10} {'no-op s':>9} {'files':>6}  "
          f"{'warm hits':<12} identical")
    for row in rows:
        print(f"{row['config']:<22} {row['cold']:9.1f} {row['warm']:9.1f} {row['warm'] / row['cold']:10.3f} "
              f"{row['noop']:9.2f} {row['files']:6d}  {row['hits']:<12} {row['identical']}")
        if len(row["warm_runs"]) > 1:
            print(f"{'':<22} warm runs: {', '.join(f'{seconds:.1f} s' for seconds in row['warm_runs'])}")
    if args.remote:
        print(f"\n{'config':<22} {'cold up MB':>11} {'cold down MB':>13} {'warm up MB':>11} {'warm down MB':>13}"
              "  (warm: per run)")
        for row in rows:
            print(f"{row['config']:<22} {row['cold_up'] / 1e6:11.3f} {row['cold_down'] / 1e6:13.3f} "
                  f"{row['warm_up'] / 1e6:11.3f} {row['warm_down'] / 1e6:13.3f}")
    return 0 if all(row["identical"] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
