"""`python -m search.export --study NAME [--rank K]`: a trial's full configuration as a space YAML.

The file is a space whose parameters are all fixed at the trial's values, with `source` naming the
study, the trial and its objective, so it feeds straight into `search.train --config` or back into
`search.run --space`. Default output: results/<study>/best_config.yaml (rank_K_config.yaml for K > 1).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search import records
from search.cli import UsageError, fail
from search.report import add_study_flags, open_existing_study


def export_trial(study, rank: int, output: Path, storage_label: str) -> Path:
    """Write the rank-th best complete trial's configuration to `output`; return the path."""
    trial = records.best_trial(study, rank)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(records.export_config(study, trial, storage_label).to_yaml())
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.export",
                                description="Export a trial's full configuration (the best by default) as YAML.")
    add_study_flags(p)
    p.add_argument("--rank", type=int, default=1, metavar="K", help="export the K-th best complete trial "
                   "(default: 1, the best)")
    p.add_argument("--output", type=Path, metavar="FILE", help="where to write it (default: "
                   "RESULTS/<study>/best_config.yaml, or rank_K_config.yaml)")
    args = p.parse_args(argv)
    if args.rank < 1:
        return fail(f"--rank {args.rank}: ranks start at 1 (the best trial)")
    from search.storage import StorageError

    try:
        study, label = open_existing_study(args.storage, args.study, args.results)
        name = "best_config.yaml" if args.rank == 1 else f"rank_{args.rank}_config.yaml"
        path = export_trial(study, args.rank, args.output or args.results / study.study_name / name, label)
    except (UsageError, StorageError) as exc:
        return fail(str(exc))
    except ValueError as exc:  # no complete trial, rank out of range, a study fer-search did not create
        return fail(f"{exc}; see `python -m search.report --study {args.study}` for the trials")
    except OSError as exc:
        return fail(f"cannot write the configuration: {exc}; pass --output FILE")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
