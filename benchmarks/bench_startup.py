"""Start-up cost of the command line (target 7): `python -m search.run --help` in a fresh process.

    python benchmarks/bench_startup.py [--runs 7]

Each run is a new interpreter, as a user's is; the median is reported, with which heavy modules
(TensorFlow, Keras, Optuna, pandas) `--help` imported. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import benchlib

HEAVY = ("tensorflow", "keras", "optuna", "pandas", "plotly", "sqlalchemy")
PROBE = ("import runpy, sys; sys.argv = ['search.run', '--help']\n"
         "try:\n    runpy.run_module('search.run', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         f"print('HEAVY', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--module", default="search.run", help="CLI module to time (default: search.run)")
    args = p.parse_args(argv)

    with benchlib.Machine("bench_startup", modules=()):
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", args.module, "--help"], cwd=benchlib.REPO,
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if done.returncode != 0:
                print(done.stderr)
                return 1
        probe = subprocess.run([sys.executable, "-c", PROBE.replace("search.run", args.module)], cwd=benchlib.REPO,
                               capture_output=True, text=True)
        heavy = next((line.split(" ", 1)[1] for line in probe.stderr.splitlines() if line.startswith("HEAVY")), "?")
        bare = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - started)
        print(f"runs       {', '.join(f'{t:.3f}' for t in times)} s")
        print(f"[7] python -m {args.module} --help: median {benchlib.median(times):.3f} s over {args.runs} runs "
              f"(a bare interpreter: {benchlib.median(bare):.3f} s); heavy modules imported: {heavy or 'none'} "
              f"(target < 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
