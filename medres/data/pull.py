"""``python -m medres.data.pull``: a cohort from a PACS into an export folder that the index reads.

    python -m medres.data.pull --dicomweb https://pacs/dicom-web --out export/ --accessions cohort.csv
    python -m medres.data.pull --dicomweb URL --out export/ --query Modality=CT StudyDate=20210101-20211231
    python -m medres.data.pull --dimse HOST:PORT --called-aet PACS --calling-aet MEDRES --out export/ ...
    python -m medres.data.pull --dimse HOST:PORT --called-aet PACS --move-dest MEDRES --move-port 11112 ...

Studies are found by accession number (a CSV with an ``AccessionNumber`` column) or by attribute
filters (QIDO-RS or C-FIND at study level); each matching series is retrieved (WADO-RS: one streamed request
per series, each instance written as the server's bytes after its header is checked; a resumed series
is streamed again and only its missing instances kept, a single missing one asked for alone;
or C-GET, or with ``--move-dest`` C-MOVE to a Storage SCP medres runs meanwhile, per series) into
``OUT/<study pseudonym>/<series pseudonym>/<SOPInstanceUID>.dcm``: the
pseudonyms are HMAC-SHA256 of the UIDs under the project key (the index's ``study_id`` is the same
``s...`` pseudonym), so no name or id is in a path. Each file is written to a temporary name and
renamed, so a file with its final name is complete; a rerun fetches only the instances that are not
there yet. At the end every series is checked against the instance count the server reported and a
short series is listed (exit code 1). ``--series-filter CONFIG`` applies the config's ``data.index``
rules before anything is downloaded (modality, slice count, and from one instance's header:
localizers, ORIGINAL, orientation); SEG and RTSTRUCT series are always fetched (the index's masks).
``--index DIR`` then runs ``medres.data.index`` on the result. ``--out`` is a new or empty folder or
an export a pull wrote; every instance stored is listed in its ``.medres_written.json``
(:mod:`medres.files`), and nothing is written through a link.
Credentials: see :mod:`medres.data.pacs.auth` (never on the command line).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from medres.data.pacs.pull import Server, load_rules, parse_query, pull, read_accessions, summary
from medres.errors import ConfigError, MedresError

__all__ = ["main"]


def _server(args: argparse.Namespace, credentials: Any) -> Server:
    if args.dicomweb:
        from medres.data.pacs.dicomweb import DicomWeb

        return DicomWeb(args.dicomweb, credentials, ca_bundle=args.ca_bundle, insecure=args.insecure,
                        timeout_s=args.timeout, workers=args.workers)
    from medres.data.pacs.dimse import Dimse

    return Dimse(args.dimse, called_aet=args.called_aet, calling_aet=args.calling_aet, timeout_s=args.timeout,
                 move_dest=args.move_dest, move_host=args.move_host, move_port=args.move_port)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medres.data.pull", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dicomweb", metavar="URL", help="the server's DICOMweb root, e.g. https://pacs/dicom-web")
    where.add_argument("--dimse", metavar="HOST:PORT", help="the PACS's DIMSE address (C-FIND + C-GET)")
    p.add_argument("--called-aet", default="ANY-SCP", help="with --dimse: the PACS's AE title")
    p.add_argument("--calling-aet", default="MEDRES", help="with --dimse: medres's AE title")
    p.add_argument("--move-dest", metavar="AET", help="with --dimse: retrieve with C-MOVE to this AE title "
                                                      "(medres's, as the PACS knows it) instead of C-GET")
    p.add_argument("--move-port", type=int, default=11112, help="with --move-dest: the port medres receives "
                                                                "on, as the PACS knows it (default 11112)")
    p.add_argument("--move-host", default="127.0.0.1", help="with --move-dest: the address to receive on "
                                                            "(default 127.0.0.1; all: 0.0.0.0)")
    p.add_argument("--out", required=True, help="the export folder to pull into (study/series/SOP.dcm)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--accessions", metavar="CSV", help="a CSV with an AccessionNumber column")
    which.add_argument("--query", nargs="+", metavar="KEY=VALUE", help="study filters, e.g. Modality=CT")
    p.add_argument("--series-filter", metavar="CONFIG", help="a config whose data.index rules decide, before "
                                                             "download, which series could be kept")
    p.add_argument("--index", metavar="DIR", help="then run medres.data.index on the export into DIR")
    p.add_argument("--labels", help="with --index: the labels CSV")
    p.add_argument("--workers", type=int, default=4, help="parallel retrievals (default 4)")
    p.add_argument("--max-studies", type=int, default=1000, help="refuse more matches (default 1000)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--credentials", metavar="FILE", help="user=/password= or token= lines; mode 0600")
    p.add_argument("--ca-bundle", metavar="PEM", help="the CAs that sign the server's TLS certificate")
    p.add_argument("--insecure", action="store_true", help="do not verify TLS (a warning is printed)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from medres.data.pacs.auth import read_credentials

        if args.workers < 1 or args.max_studies < 1:
            raise ConfigError("--workers and --max-studies must be at least 1")
        if args.move_dest and not args.dimse:
            raise ConfigError("--move-dest needs --dimse (C-MOVE is DIMSE)")
        filters = parse_query(args.query or [])
        accessions = read_accessions(args.accessions) if args.accessions else None
        rules = load_rules(args.series_filter) if args.series_filter else None
        from medres.files import check_output

        check_output(args.out, inputs={"accessions file": args.accessions, "series-filter config":
                                       args.series_filter, "labels file": args.labels,
                                       "credentials file": args.credentials}, what="--out folder")
        if args.index:
            check_output(args.index, inputs={"export (--out)": args.out, "accessions file": args.accessions,
                                             "labels file": args.labels}, what="--index folder")
        server = _server(args, read_credentials(args.credentials))
        result = pull(server, args.out, accessions=accessions, filters=filters, rules=rules,
                      workers=args.workers, max_studies=args.max_studies, progress=not args.no_progress)
        print(summary(result))
        if args.index:
            from medres.config import load_config
            from medres.data.index import index_dicom

            cfg = load_config(args.series_filter)
            done = index_dicom(args.out, args.index, labels=args.labels, rules=cfg.data.index,
                               mask_labels=dict(cfg.data.mask_labels), progress=not args.no_progress,
                               max_files_per_folder=cfg.data.max_files_per_series)
            print(f"medres index: {done.series} series, {done.kept} kept\n  manifest: {done.manifest}\n"
                  f"  index:    {done.index}")
    except MedresError as err:
        print(f"medres pull: error: {err}", file=sys.stderr)
        return 2
    return 1 if result.short else 0


if __name__ == "__main__":
    sys.exit(main())
