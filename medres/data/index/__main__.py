"""Index a hospital export into a manifest: ``python -m medres.data.index ROOT --out DIR``.

A very large export in K parts (a scheduler's array job), then one merge::

    python -m medres.data.index ROOT --out DIR --num-parts K --part-id i     # i = 0 .. K-1
    python -m medres.data.index --merge DIR [--labels L.csv] [--config C.yaml]
"""

from __future__ import annotations

import argparse
import sys

from medres.data.index.build import _LABEL_KEYS, index_dicom
from medres.errors import ConfigError, DataError
from medres.files import check_output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.data.index", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="the export's top folder (with --merge: the parts' own)")
    parser.add_argument("--out", help="output folder (manifest.csv, index.csv, private/)")
    parser.add_argument("--labels", help="CSV of labels keyed by --labels-key")
    parser.add_argument("--labels-key", choices=sorted(_LABEL_KEYS), help="default: data.index.labels_key")
    parser.add_argument("--config", help="YAML config: data.index rules, data.mask_labels")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.index.min_slices=20 data.index.per_study=all")
    parser.add_argument("--num-parts", type=int, metavar="K", help="read only one of K shares of the files "
                                                                  "(with --part-id; then --merge)")
    parser.add_argument("--part-id", type=int, metavar="I", help="which share (0..K-1) this run reads")
    parser.add_argument("--merge", metavar="DIR", help="index the export from the parts in DIR/parts/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        from medres.config import load_config

        cfg = load_config(args.config, args.set)
        common = {"rules": cfg.data.index, "progress": not args.no_progress,
                  "max_files_per_folder": cfg.data.max_files_per_series}
        if (args.num_parts is None) != (args.part_id is None):
            raise ConfigError("--num-parts and --part-id go together", hint="e.g. --num-parts 8 --part-id 0")
        if args.merge:
            from medres.data.index.parts import merge_parts

            if args.num_parts is not None or (args.out and args.out != args.merge):
                raise ConfigError("--merge DIR takes neither --num-parts/--part-id nor another --out")
            check_output(args.merge, inputs={"config file": cfg.source}, what="output folder (--merge)")
            result = merge_parts(args.merge, args.root, labels=args.labels, labels_key=args.labels_key,
                                 mask_labels=dict(cfg.data.mask_labels), **common)
        else:
            if not args.root or not args.out:
                raise ConfigError("ROOT and --out are needed (or --merge DIR)",
                                  hint="python -m medres.data.index EXPORT --out DIR")
            check_output(args.out, inputs={"config file": cfg.source}, what="output folder (--out)")
            if args.num_parts is not None:
                from medres.data.index.parts import index_part

                if args.labels:
                    raise ConfigError("--labels belongs to the merge (--merge DIR --labels ...), not a part")
                part = index_part(args.root, args.out, num_parts=args.num_parts, part_id=args.part_id,
                                  **common)
                print(f"medres index: part {args.part_id} of {args.num_parts}: {part.files} files "
                      f"({part.read} read, {part.cached} from the cache) in {part.seconds:.1f} s -> "
                      f"{part.folder}\n  when every part is done: python -m medres.data.index --merge "
                      f"{args.out}")
                return 0
            result = index_dicom(args.root, args.out, labels=args.labels, labels_key=args.labels_key,
                                 mask_labels=dict(cfg.data.mask_labels), **common)
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
