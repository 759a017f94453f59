"""Comparison tables and plots from run and sweep directories:

    python -m src.report outputs/sweeps/<sweep> [outputs/runs/<run> ...] [--out DIR] [--no-plots]

Writes summary.md / summary.csv (one row per run, best validation first; mean ± std over runs that
differ only in seed or data.fold in aggregate.csv), curves.png, bars.png and best_confusion_matrix.png
into --out (default: the sweep directory when given one sweep, else outputs/reports/<date>_<time>).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .engine.report import collect_runs, write_report
from .errors import UserError

log = logging.getLogger("src.report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories, or folders holding them")
    parser.add_argument("--out", help="where to write the report")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        runs = collect_runs(args.paths)
        single_sweep = len(args.paths) == 1 and (Path(args.paths[0]) / "jobs.jsonl").is_file()
        out = Path(args.out or (args.paths[0] if single_sweep else
                                Path("outputs/reports") / time.strftime("%Y-%m-%d_%H-%M-%S")))
        print(write_report(runs, out, plots=not args.no_plots))
    except UserError as exc:
        log.error("%s", exc)
        return exc.exit_code
    log.info("Report written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
