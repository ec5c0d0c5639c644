"""``python -m medres.evaluate --run runs/NAME [--output DIR] [--compare RUN ...]``: the report bundle.

Reads a run folder, computes per-case segmentation metrics (predicted masks against the manifest's
reference masks, in the source scan's geometry and spacing), the voxel spacing of every scan, the
worst-case gallery (with the classification head's Grad-CAM when the fold's checkpoint and the data
pipeline are available), saves them in ``--output`` (default ``runs/NAME/report``) under
``private/evaluation/``, and builds the bundle from those saved tables
(`medres.report.build_saved_bundle`, which a notebook can call again without torch). Written files:
``report.html``, ``summary.json``, ``predictions.csv``, ``seg_cases.csv``, ``cohort.csv``. ``--compare``
compares every pair of the runs given (the run itself included) on the cases all of them predicted,
Holm-adjusting DeLong's p-values across pairs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medres.errors import ConfigError, DataError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the run folder (runs/NAME)")
    parser.add_argument("--output", help="where to write the bundle (default: RUN/report)")
    parser.add_argument(
        "--compare", nargs="+", metavar="RUN",
        help="other run folders: every pair compared (paired DeLong, Holm-adjusted across pairs, and "
        "paired bootstrap differences of AUROC, AP, Brier and net benefit)",
    )
    parser.add_argument(
        "--net-benefit-at", type=float, nargs="+", metavar="P_T",
        help="threshold probabilities at which --compare compares net benefit (default: the run's "
        "evaluate.net_benefit_thresholds, 0.1 0.2 0.3)",
    )
    parser.add_argument("--gallery", type=int, default=4, help="number of worst cases shown (default 4)")
    args = parser.parse_args(argv)
    if args.net_benefit_at and not all(0 < t < 1 for t in args.net_benefit_at):
        parser.error(f"--net-benefit-at {args.net_benefit_at}: threshold probabilities must lie strictly "
                     "between 0 and 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from medres.logs import route_library_logs

    route_library_logs()  # highdicom's, MLflow's and alembic's INFO lines stay off the terminal
    from medres.evaluation import evaluate_run
    from medres.report.headline import headline
    from medres.report.run_folder import read_run_config

    try:
        path = evaluate_run(args.run, args.output, args.compare, gallery_size=args.gallery,
                            net_benefit_thresholds=args.net_benefit_at)
        ci_level = read_run_config(args.run).evaluate.ci_level
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(headline(path.parent, ci_level=ci_level))  # the headline numbers, ending with the report's path
    return 0


if __name__ == "__main__":
    sys.exit(main())
