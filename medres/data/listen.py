"""``python -m medres.data.listen``: receive what a PACS sends (C-STORE) into an export folder.

    python -m medres.data.listen --port 11112 --aet MEDRES --out export/ --allow PACS@10.0.0.5
    python -m medres.data.listen --host 0.0.0.0 --port 11112 --aet MEDRES --out export/ \\
        --allow PACS@10.0.0.5 MODALITY1 --max-bytes 500000000000

A Storage SCP (pynetdicom) that files each instance as
``OUT/<study pseudonym>/<series pseudonym>/<SOPInstanceUID>.dcm``, the layout ``medres.data.pull``
writes and ``medres.data.index`` reads (a temporary file, then a rename: a file with its final name
is complete). Only the calling AE titles of ``--allow`` (``AET`` or ``AET@ADDRESS``) may associate;
others are rejected and logged without patient data. Past ``--max-bytes`` in the export, or with less
than ``--min-free`` bytes free on its disk, a C-STORE is refused with an out-of-resources status
(0xA700). It listens on 127.0.0.1 unless ``--host`` says otherwise. SIGTERM or SIGINT (Ctrl-C) stops it
cleanly: the file being written is finished, the associations closed, exit code 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from medres.errors import ConfigError, MedresError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from medres.data.pacs.listen import DEFAULT_MIN_FREE, Listener, parse_allow

    p = argparse.ArgumentParser(prog="python -m medres.data.listen", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=11112, help="the port to listen on (default 11112)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind (default 127.0.0.1; all: 0.0.0.0)")
    p.add_argument("--aet", default="MEDRES", help="medres's AE title (the called AE title; default MEDRES)")
    p.add_argument("--out", required=True, help="the export folder (study/series/SOP.dcm)")
    p.add_argument("--allow", nargs="+", required=True, metavar="AET[@ADDRESS]",
                   help="the calling AE titles (optionally at one address) that may send")
    p.add_argument("--max-bytes", type=int, default=None, help="refuse instances past this export size")
    p.add_argument("--min-free", type=int, default=DEFAULT_MIN_FREE,
                   help=f"refuse instances with fewer bytes free on its disk (default {DEFAULT_MIN_FREE})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = threading.Event()
    try:
        from medres.files import check_output

        if not 0 < args.port < 65536:
            raise ConfigError(f"--port {args.port} is not a port (1-65535)")
        if args.max_bytes is not None and args.max_bytes < 1:
            raise ConfigError("--max-bytes must be at least 1")
        check_output(args.out, inputs={}, what="--out folder")
        listener = Listener(args.out, aet=args.aet, host=args.host, port=args.port,
                            allow=parse_allow(args.allow), max_bytes=args.max_bytes,
                            min_free_bytes=args.min_free)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        listener.start()
    except MedresError as err:
        print(f"medres listen: error: {err}", file=sys.stderr)
        return 2
    print(f"medres listen: {listener.name} -> {args.out}; allowed: "
          f"{', '.join(a.aet + ('@' + a.address if a.address else '') for a in listener.allow)}", flush=True)
    while not stop.wait(1.0):
        pass
    listener.stop()
    print(f"medres listen: stopped; {listener.received} instance(s) received, {listener.refused} refused",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
