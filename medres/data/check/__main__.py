"""Check a whole cohort before training: ``python -m medres.data.check --manifest M [--config C]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from medres.data.check import CheckSettings, _from_config, check_cohort, format_problems
from medres.errors import ConfigError, DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", help="the cohort CSV (default: the config's data.manifest)")
    parser.add_argument("--config", help="YAML config: label vocabulary, mask labels, image columns, dims")
    parser.add_argument("--root", help="the data root paths may not leave (default: config, else the "
                                       "manifest's folder)")
    parser.add_argument("--link-root", action="append", default=[], metavar="DIR",
                        help="a folder outside the data root that symbolic links may lead into (repeatable; "
                             "adds to data.link_roots)")
    parser.add_argument("--atol", type=float, default=1e-3, help="image/mask affine tolerance (mm)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes reading scans (default: the CPUs, at most 8)")
    parser.add_argument("--manifest-only", action="store_true",
                        help="check the manifest (columns, rows, labels, paths) without reading the scans")
    args = parser.parse_args(argv)
    settings: dict = {"vocabulary": None, "mask_labels": None, "image_columns": None, "mask_column": "mask",
                      "ndim": None, "root": None, "manifest": None}
    if args.workers is not None:
        settings["workers"] = args.workers
    if args.config:
        try:
            settings.update(_from_config(args.config))
        except ConfigError as err:
            print(f"medres data check: {err}", file=sys.stderr)
            return 2
    manifest = args.manifest or settings.pop("manifest")
    settings.pop("manifest", None)
    if args.root:
        settings["root"] = args.root
    if args.link_root:
        settings["link_roots"] = [*settings.get("link_roots", []), *args.link_root]
    if not manifest:
        parser.error("--manifest is required (or a --config with data.manifest)")
    start = time.perf_counter()

    def progress(done: int, total: int, problems: int) -> None:
        print(f"medres data check: {done}/{total} rows read, {problems} problem(s) so far "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    def found(err: DataError, warning: bool) -> None:
        print(f"{'warning' if warning else 'problem'}: {err}", file=sys.stderr, flush=True)

    try:
        result = check_cohort(manifest, CheckSettings(atol=args.atol, manifest_only=args.manifest_only,
                                                      **settings), on_progress=progress, on_problem=found)
    except ConfigError as err:  # e.g. a --link-root that is not a folder
        print(f"medres data check: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    warned = f"; {len(result.warnings)} warning(s), listed on stderr" if result.warnings else ""
    if result.problems:
        print(f"medres data check: {len(result.problems)} problem(s) in {manifest} "
              f"({result.rows} rows, {seconds:.1f} s{warned})")
        print(format_problems(result.problems))
        return 1
    what = "manifest only" if args.manifest_only else f"{result.images} image(s), {result.masks} mask(s)"
    print(f"medres data check: OK: {result.rows} rows, {what} checked in {seconds:.1f} s "
          f"({manifest}){warned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
