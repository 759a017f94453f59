"""Comparison tables and plots from run and sweep directories:

    python -m src.report outputs/sweeps/<sweep> [outputs/runs/<run> ...] [--out DIR] [--no-plots]
                         [--time-to ACC ...] [--readme FILE --section NAME] [--keep-runs]
    python -m src.report "new recipe=outputs/runs/a" "old recipe=outputs/runs/b" ...

A path given as LABEL=PATH names its runs LABEL (with their seeds), and its runs with several seeds form
the group LABEL: for runs that their overrides do not tell apart, such as two versions of one experiment.

Writes summary.md / summary.csv (one row per run, best validation first; mean ± std over runs that
differ only in seed or data.fold in aggregate.csv; how each run was made: data, command, machine, wall
times; the training time each run took to reach --time-to val accuracies), curves.png,
time_to_accuracy.png, bars.png and best_confusion_matrix.png into --out (default: the sweep directory when
given one sweep, else outputs/reports/<date>_<time>).

--keep-runs copies each run's records (metrics.json, history.csv, run_info.json, per_class.md, its
.hydra configs) into OUT/runs: `python -m src.report OUT/runs NEW_RUNS... --out OUT --keep-runs` makes the
report again with more runs, after the outputs/ it came from are gone.

--readme FILE --section NAME also puts summary.md into FILE between the lines `<!-- report NAME -->` and
`<!-- /report NAME -->` (figure links made relative to FILE), so that a README's results are the
report's, regenerated rather than typed.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from .errors import UserError
from .fileio import check_writable_folder
from .reporting.comparison import write_comparison
from .reporting.documents import insert_into_document
from .reporting.run_names import collect_runs
from .reporting.run_records import keep_run_records

log = logging.getLogger("src.report")


def main(argv: list[str] | None = None) -> int:
    program = "fer-report" if Path(sys.argv[0]).name == "fer-report" else "python -m src.report"
    parser = argparse.ArgumentParser(prog=program, description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, sweep directories, or folders holding them; "
                                                 "LABEL=PATH names the runs found there LABEL")
    parser.add_argument("--out", help="where to write the report")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--keep-runs", action="store_true",
                        help="copy each run's records (metrics, history, config: small text files) to OUT/runs, "
                             "so that the report can be made again, or grown, from OUT alone")
    parser.add_argument("--time-to", type=float, nargs="+", metavar="ACC",
                        help="val accuracies (e.g. 0.60 0.65) to give each run's training time to; default: "
                             "the best val accuracy every run reached")
    parser.add_argument("--readme", help="a Markdown file to put summary.md into (with --section)")
    parser.add_argument("--section", help="the name in the --readme file's <!-- report NAME --> markers")
    args = parser.parse_args(argv)
    if bool(args.readme) != bool(args.section):
        parser.error("--readme and --section go together")
    if any(not 0 < accuracy <= 1 for accuracy in args.time_to or ()):
        parser.error("--time-to takes accuracies between 0 and 1 (0.65, not 65)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        single_sweep = len(args.paths) == 1 and (Path(args.paths[0]) / "jobs.jsonl").is_file()
        out = Path(args.out or (args.paths[0] if single_sweep else
                                Path("outputs/reports") / time.strftime("%Y-%m-%d_%H-%M-%S")))
        check_writable_folder(out, "--out")
        runs = collect_runs(args.paths)
        if args.keep_runs:
            log.info("Run records kept in %s", keep_run_records(runs, out))
        markdown = write_comparison(runs, out, plots=not args.no_plots, targets=args.time_to)
        print(markdown)
        if args.readme:
            # quoted as a shell needs it (labels have spaces): the comment can be pasted to make the report again
            command = "python -m src.report " + shlex.join(sys.argv[1:] if argv is None else argv)
            insert_into_document(Path(args.readme), args.section, markdown, out, command)
            log.info("Section %s of %s replaced", args.section, args.readme)
    except UserError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("Interrupted (Ctrl-C)")
        return 130
    log.info("Report written to %s", out)
    return 0


def cli() -> None:
    """`python -m src.report` and the `fer-report` command."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
