"""Index a hospital export into a manifest: ``python -m medres.data.index ROOT --out DIR``."""

from __future__ import annotations

import argparse
import sys

from medres.data.index.build import _LABEL_KEYS, index_dicom
from medres.errors import ConfigError, DataError
from medres.files import check_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.data.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the export's top folder")
    parser.add_argument("--out", required=True, help="output folder (manifest.csv, index.csv, private/)")
    parser.add_argument("--labels", help="CSV of labels keyed by --labels-key")
    parser.add_argument("--labels-key", choices=sorted(_LABEL_KEYS), help="default: data.index.labels_key")
    parser.add_argument("--config", help="YAML config: data.index rules, data.mask_labels")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.index.min_slices=20 data.index.per_study=all")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        from medres.config import load_config

        cfg = load_config(args.config, args.set)
        check_output(args.out, inputs={"config file": cfg.source}, what="output folder (--out)")
        result = index_dicom(args.root, args.out, labels=args.labels, labels_key=args.labels_key,
                             rules=cfg.data.index, mask_labels=dict(cfg.data.mask_labels),
                             progress=not args.no_progress,
                             max_files_per_folder=cfg.data.max_files_per_series)
    except (DataError, ConfigError) as err:
        print(f"medres index: {err}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {what}" for what, n in sorted(result.skipped_files.items())) or "none"
    print(f"medres index: {result.files} files ({result.read} read, {result.cached} from the cache) in "
          f"{result.seconds:.1f} s; {result.series} series, {result.kept} kept; files skipped: {skipped}\n"
          f"  manifest: {result.manifest}\n  index:    {result.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
