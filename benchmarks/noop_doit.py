"""How long a `doit` that has nothing to do takes over a built tree (goal: <= 0.5 s on the full graph), and a
check that it really executed nothing.

  python benchmarks/noop_doit.py                                  # this tree, pipeline.toml, 5 runs
  python benchmarks/noop_doit.py --tree /path/to/built/clone --config configs/smoke.toml --runs 10
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--config", default="pipeline.toml")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    seconds = []
    for _ in range(args.runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "doit", f"config={args.config}"], cwd=args.tree,
                              capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        ran = [line[3:] for line in done.stdout.splitlines() if line.startswith(".  ")]
        if done.returncode != 0 or ran:
            sys.exit(f"not a no-op in {args.tree}: exit {done.returncode}, executed {ran}; build it first")
    print(f"no-op doit, {args.config}, {args.runs} runs: " + ", ".join(f"{s:.2f}" for s in seconds)
          + f" s; median {statistics.median(seconds):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
