"""What a trial costs beyond its training: throughput inside a trial against a plain model.fit
(target 2), the overhead per trial and the framework's share of a short trial (target 3), and the
input pipeline alone against what training consumes (target 6).

    python benchmarks/bench_trial.py --data PATH [--subset 0.25] [--epochs 4] [--rounds 2] [--framework-trials 3] [--pool]

Everything runs in one process, side by side: the plain fit and the trial build the same model
(the space's default point) and read the same tf.data pipeline (`Objective.datasets`), in
alternating order, so a shared machine's load falls on both. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import benchlib


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    benchlib.add_data_flag(p)
    p.add_argument("--space", default="baseline_cnn", help="space whose default point is trained")
    p.add_argument("--subset", type=float, default=0.25, help="fraction of Training (default: 0.25)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per throughput run; the first (tracing) "
                   "is left out (default: 4)")
    p.add_argument("--rounds", type=int, default=2, help="plain-fit/trial pairs, order alternating (default: 2)")
    p.add_argument("--framework-epochs", type=int, default=2, help="epochs of the trial whose framework "
                   "share is measured (default: 2)")
    p.add_argument("--framework-trials", type=int, default=3, help="short trials whose framework share is "
                   "measured; the median is the figure (default: 3)")
    p.add_argument("--pool", action="store_true", help="keep oneDNN's tensors in TensorFlow's pool "
                   "(TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0; search.run's before 2026-12-05), the rest set up as search.run")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch traces and is not timed")

    from search.memory import ONEDNN_SYSTEM_ALLOCATOR, set_up_allocation

    if args.pool:  # set_up_allocation leaves a value the environment gives as it is
        os.environ[ONEDNN_SYSTEM_ALLOCATOR] = "0"
    allocation = set_up_allocation()  # as search.run sets itself up, before TensorFlow is imported
    with benchlib.Machine("bench_trial"):
        print(f"memory     {allocation}")
        import optuna

        from search.data import load_fer2013
        from search.objective import Objective
        from search.space import load_space

        space = load_space(args.space).with_settings(subset=args.subset, epochs=args.epochs, min_epochs=1)
        load_fer2013(args.data, labels=space.labels)  # make sure the cache exists before timing it
        started = time.perf_counter()
        data = load_fer2013(args.data, labels=space.labels)
        load_seconds = time.perf_counter() - started
        objective = Objective(data, space, log=None)
        config = space.defaults()
        n = len(objective.train_split(args.subset))
        print(f"workload   {space.model} default point, batch {config['batch_size']}, {n} training images "
              f"({args.subset:g} of {len(data.train)}), validation {len(data.val)}")
        print(f"data load  {load_seconds:.3f} s (cached arrays; the CSV parse is in bench_data_load.py)")

        pipeline = pipeline_rate(objective, config, args.subset)
        plain, trial, first_begin, first_end = [], [], [], []
        for r in range(args.rounds):
            for kind in (("plain", "trial") if r % 2 == 0 else ("trial", "plain")):
                if kind == "plain":
                    seconds = plain_fit(objective, config, args.subset, args.epochs)
                    plain += seconds
                else:
                    seconds, begin, end = trial_fit(objective, config, args.subset, args.epochs)
                    trial += seconds
                    first_begin.append(begin)
                    first_end.append(end)
                print(f"  round {r + 1} {kind:<5} steady epochs (train + validation): "
                      f"{', '.join(f'{s:.2f}' for s in seconds)} s", flush=True)

        # Epoch times on this VM are bimodal (about 10 s or 20 s for the same epoch, in plain fits and
        # trials alike), so the median of few epochs can land on either mode: the fastest steady epoch
        # is printed too, as the machine's undisturbed speed.
        plain_rate, trial_rate = n / benchlib.median(plain), n / benchlib.median(trial)
        plain_best, trial_best = n / min(plain), n / min(trial)
        print(f"\n[2] training throughput, steady epochs (validation included): plain model.fit median "
              f"{plain_rate:.0f} images/s, fastest {plain_best:.0f}; inside a trial median {trial_rate:.0f}, "
              f"fastest {trial_best:.0f}: ratio {trial_rate / plain_rate:.3f} by medians, "
              f"{trial_best / plain_best:.3f} by fastest epochs (target >= 0.95)")
        print(f"[3] overhead per trial, data loaded: trial start to first training step "
              f"{benchlib.median(first_begin):.2f} s, to the end of the first step (its tracing included) "
              f"{benchlib.median(first_end):.2f} s (target <= 3 s)")

        short = space.with_settings(epochs=args.framework_epochs, min_epochs=1)
        shares = []
        short_objective = Objective(data, short, log=None)  # one per process, as in a search
        for k in range(args.framework_trials):
            share, recorded = framework_share(short_objective, short, n, config["batch_size"], optuna)
            shares.append(share)
        print(f"[3] framework share of a {args.framework_epochs}-epoch trial on {args.subset:g} of Training: median "
              f"{benchlib.median(shares):.1f}% of {len(shares)} trials ({', '.join(f'{x:.1f}' for x in shares)}; "
              f"the first built the objective's pipelines, the others reused them) (target <= 5%)")
        print(f"    per run, once: writing trials.csv, best_config.yaml and leaderboard.html {recorded:.2f} s; "
              f"loading the cached data {load_seconds:.2f} s")
        print(f"[6] input pipeline alone (gather, cast, flip + rotation, batch): {pipeline:.0f} images/s = "
              f"{pipeline / plain_rate:.1f}x what plain training consumes (target >= 10x)")
    return 0


def framework_share(objective, space, n: int, batch_size: int, optuna) -> tuple[float, float]:
    """(percent of the wall time, seconds to write the run's outputs) of one short trial run by
    study.optimize on a SQLite study, printing where the time outside its epochs fell.

    The framework's part is the wall time outside the epochs (sampling, building, recording), plus what
    tracing added to the first training step and to the first validation pass. The epochs themselves
    count as compute, whatever their speed (epoch times here are bimodal, see above)."""
    from search.optuna_sampling import enqueue_params

    timed = _Timed(objective)
    wall, recorded, optimize_started = optuna_trial(timed, space, enqueue_params(space), optuna)
    t = timed.timer
    steps = -(-n // batch_size)
    step = min(t.train_seconds[1:] or t.train_seconds) / steps  # a steady training step
    validation = min(e - tr for e, tr in zip(t.epoch_seconds, t.train_seconds))  # a steady validation pass
    outside = wall - sum(t.epoch_seconds)
    tracing = (t.first_step_end - t.first_begin - step) + (t.epoch_seconds[0] - t.train_seconds[0] - validation)
    framework = outside + tracing
    spans = t.epoch_spans
    between = sum(b - a for (_, a), (b, _) in zip(spans, spans[1:]))
    print(f"[3] framework share of a {len(spans)}-epoch trial, run by study.optimize on a SQLite study: wall "
          f"{wall:.2f} s; outside the epochs {outside:.2f} s, tracing (first step and first validation beyond "
          f"their steady {step * 1000:.0f} ms and {validation:.2f} s) {tracing:.2f} s: {framework:.2f} s = "
          f"{100 * framework / wall:.1f}%")
    print(f"    outside the epochs, by where it falls: sampling {timed.called - optimize_started:.2f} s; "
          f"building, pipelines, fit's set-up {t.train_begin - timed.called:.2f} s; fit's start to the "
          f"first epoch {t.first_begin - t.train_begin:.2f} s; between epochs {between:.2f} s; the last "
          f"epoch's end to fit's end {t.train_end - spans[-1][1]:.2f} s; fit's end to the objective's "
          f"return {timed.returned - t.train_end:.2f} s; recording the trial "
          f"{optimize_started + wall - timed.returned:.2f} s", flush=True)
    return 100 * framework / wall, recorded


def pipeline_rate(objective, config, subset: float, epochs: int = 3) -> float:
    """Images/s of the trial's training pipeline iterated alone; the first pass warms it up."""
    pipeline, _ = objective.datasets(config, subset)
    batches, rates = iter(pipeline.dataset), []
    for epoch in range(epochs + 1):
        started, images = time.perf_counter(), 0
        for _ in range(pipeline.steps_per_epoch):
            images += int(next(batches)[1].shape[0])
        if epoch:
            rates.append(images / (time.perf_counter() - started))
    return benchlib.median(rates)


def plain_fit(objective, config, subset: float, epochs: int) -> list[float]:
    """Steady epoch seconds of model.fit on the trial's model and pipeline, with nothing added."""
    model = objective.build(config)
    pipeline, val_ds = objective.datasets(config, subset)
    timer = benchlib.epoch_timer()
    model.fit(pipeline.dataset, steps_per_epoch=pipeline.steps_per_epoch, validation_data=val_ds, epochs=epochs,
              callbacks=[timer], shuffle=False, verbose=0)
    return timer.epoch_seconds[1:]


def trial_fit(objective, config, subset: float, epochs: int) -> tuple[list[float], float, float]:
    """(steady epoch seconds, seconds to the first step's start, to its end) of one trial."""
    timer = benchlib.epoch_timer(per_batch=True)
    started = time.perf_counter()
    result = objective(config, epochs=epochs, subset=subset, callbacks=[timer])
    return timer.epoch_seconds[1:], result.metrics["first_step_seconds"], timer.first_step_end - started


class _Timed:
    """The objective with an epoch timer added to every call (the driver passes no callbacks)."""

    def __init__(self, objective):
        self.objective, self.timer = objective, None
        self.called = self.returned = 0.0  # perf_counter times of the objective's call and return

    def __call__(self, config, **kwargs):
        self.timer = benchlib.epoch_timer(per_batch=True)
        self.called = time.perf_counter()
        try:
            return self.objective(config, callbacks=[self.timer], **kwargs)
        finally:
            self.returned = time.perf_counter()


def optuna_trial(objective, space, params: dict, optuna) -> tuple[float, float, float]:
    """(wall seconds of one trial run by study.optimize on a SQLite study, seconds to write the
    run's outputs, perf_counter time study.optimize started)."""
    from search import records
    from search.optuna_driver import OptunaObjective

    with tempfile.TemporaryDirectory(prefix="fer-bench-trial-") as tmp:
        study = optuna.create_study(storage=f"sqlite:///{tmp}/optuna.db", study_name="bench",
                                    direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        study.set_user_attr("space", space.dump(mode="json"))
        study.enqueue_trial(params)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        started = time.perf_counter()
        study.optimize(OptunaObjective(objective, space), n_trials=1)
        wall = time.perf_counter() - started
        optimize_started, started = started, time.perf_counter()
        records.write_outputs(study, tmp, "bench")
        try:
            from search.report import write_report

            write_report(study, tmp, storage_label="bench")
        except ImportError:
            pass
        return wall, time.perf_counter() - started, optimize_started


if __name__ == "__main__":
    sys.exit(main())
