"""Benchmark the FER2013 data layer: CSV parse (uncached), cached load, input pipeline throughput,
and a trial's pipeline set-up: a pipeline built anew against the objective's reused one.

    PYTHONPATH=. python benchmarks/bench_data_load.py --data /path/to/fer2013.csv.gz [--naive]

Prints figures; asserts nothing. The uncached load uses a fresh temporary cache folder, so the
user's cache is neither read nor written.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from search.data import Augment, TrainingPipeline, load_fer2013, resolve_data_path  # noqa: E402


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def naive_parse(path) -> float:
    """The usual recipe: pandas, then one str.split per row."""
    import numpy as np
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_csv(path)
    np.stack([np.array(p.split(), dtype=np.uint8) for p in frame["pixels"]])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="FER2013 CSV or image-folder root (default: FER2013_PATH)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="pipeline epochs to time")
    parser.add_argument("--naive", action="store_true", help="also time pandas + str.split per row")
    parser.add_argument("--setups", type=int, default=7, help="trial set-ups timed each way (default: 7)")
    args = parser.parse_args(argv)
    source = resolve_data_path(args.data)

    import numpy as np
    import pandas as pd
    import tensorflow as tf

    print(f"platform   {platform.platform()}  ({platform.processor() or platform.machine()})")
    print(f"cpus       {os.cpu_count()}")
    print(f"python     {sys.version.split()[0]}   tensorflow {tf.__version__}   "
          f"numpy {np.__version__}   pandas {pd.__version__}")
    print(f"source     {source} ({source.stat().st_size / 2**20:.1f} MiB)")

    with tempfile.TemporaryDirectory(prefix="fer-bench-cache-") as cache_dir:
        uncached, data = timed(lambda: load_fer2013(source, cache_dir=cache_dir))
        cached, _ = timed(lambda: load_fer2013(source, cache_dir=cache_dir), repeat=5)
    print(f"rows       train {len(data.train)}  val {len(data.val)}  test {len(data.test)}")
    print(f"uncached   {uncached:7.3f} s  (hash + parse + cache write + split)")
    print(f"cached     {cached:7.3f} s  (median of 5: hash + cache read + split)")
    print(f"ratio      {uncached / cached:7.1f} x")
    if args.naive:
        naive = naive_parse(source)
        print(f"naive      {naive:7.3f} s  (pandas read_csv + str.split per row; "
              f"{naive / uncached:.1f} x the uncached load)")

    augment = Augment(flip=True, rotation=0.028)  # ~10 degrees, the baseline recipe
    pipeline = TrainingPipeline(data.train).configure(batch_size=args.batch_size, augment=augment)
    batches = iter(pipeline.dataset)  # one iterator over every epoch, as model.fit reads it in a trial
    for epoch in range(1, args.epochs + 1):
        start, images = time.perf_counter(), 0
        for _ in range(pipeline.steps_per_epoch):
            images += int(next(batches)[1].shape[0])
        seconds = time.perf_counter() - start
        print(f"pipeline   epoch {epoch}: {images / seconds:9.0f} images/s  ({images} images, "
              f"{seconds:.2f} s, batch {args.batch_size}, flip + rotation 0.028)")
    del batches

    # A trial's set-up, to its first batch: a pipeline built for it (what every trial did before the
    # objective kept its pipelines) against the reused one set to the trial's batch size and
    # augmentation. Alternating, so the machine's load falls on both.
    def first_batch(fresh: bool, k: int) -> float:
        start = time.perf_counter()
        p = TrainingPipeline(data.train, seed=k) if fresh else pipeline
        p.configure(batch_size=(32, 64, 128)[k % 3], augment=Augment(flip=True, rotation=0.01 * (k % 5)))
        next(iter(p.dataset))
        return time.perf_counter() - start

    built, reused = [], []
    for k in range(args.setups):
        for fresh in ((True, False) if k % 2 == 0 else (False, True)):
            (built if fresh else reused).append(first_batch(fresh, k))
    b, r = statistics.median(built), statistics.median(reused)
    print(f"set-up     pipeline built for the trial {b:.3f} s, reused {r:.3f} s, to the first batch "
          f"(medians of {args.setups} each, all of Training): {b / r:.1f}x, {b - r:.3f} s saved a trial")
    return 0


if __name__ == "__main__":
    sys.exit(main())
