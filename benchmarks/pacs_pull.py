"""Pull throughput from a local Orthanc: medres's pull against dicomweb-client's own loops.

Starts an Orthanc on free 127.0.0.1 ports (as the tests do: Debian packages ``orthanc`` and
``orthanc-dicomweb``), uploads ``--series`` series of ``--instances`` CT slices, then times, each into a
fresh folder and written to disk the same way:

- ``retrieve_series``: dicomweb-client's ``retrieve_series`` per series (one request per series);
- ``one at a time``: ``retrieve_instance`` per instance, one after the other;
- ``medres pull``: :func:`medres.data.pacs.pull.pull` with ``--workers`` (QIDO, one streamed WADO-RS
  request per series, each part's header checked and its bytes written as sent, atomically, the
  completeness check);
- ``bytes only``: the floor: one streamed request per series, the parts' bytes written, nothing parsed.

The dicomweb-client loops decode each instance and encode it again (``save_as``): their public calls
give pydicom Datasets, not the bytes the server sent.

    python benchmarks/pacs_pull.py --series 4 --instances 50 --workers 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--instances", type=int, default=50)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from dicomweb_client.api import DICOMwebClient
    from pydicom.uid import generate_uid

    from medres.data.pacs.auth import Credentials
    from medres.data.pacs.dicomweb import DicomWeb
    from medres.data.pacs.pull import pull
    from tests.data.dicom_factory import write_series
    from tests.data.pacs.conftest import INSTALL, orthanc_binary, running_orthanc

    binary = orthanc_binary()
    if binary is None:
        sys.exit(f"Orthanc is not installed: {INSTALL}")
    os.environ.setdefault("MEDRES_PROJECT_KEY", "benchmark-key-0123456789abcdef")
    with tempfile.TemporaryDirectory() as tmp_name, running_orthanc(Path(tmp_name), binary) as server:
        tmp = Path(tmp_name)
        study = generate_uid()
        paths = []
        for k in range(args.series):
            paths += write_series(tmp / "src" / str(k), args.instances, series_number=k + 1,
                                  edit=lambda i, ds: setattr(ds, "StudyInstanceUID", study))
        server.upload(paths)
        n = len(paths)
        import requests

        session = requests.Session()
        session.auth = (server.user, server.password)
        client = DICOMwebClient(server.dicomweb, session=session)
        series = [s["0020000E"]["Value"][0] for s in client.search_for_series(study)]

        def by_series(out: Path) -> None:
            for uid in series:
                for ds in client.retrieve_series(study, uid):
                    ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)

        def one_at_a_time(out: Path) -> None:
            for uid in series:
                for item in client.search_for_instances(study, uid, fields=["SOPInstanceUID"]):
                    ds = client.retrieve_instance(study, uid, item["00080018"]["Value"][0])
                    ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)

        def bytes_only(out: Path) -> None:
            for uid in series:
                response = session.get(f"{server.dicomweb}/studies/{study}/series/{uid}", stream=True,
                                       headers={"Accept": 'multipart/related; type="application/dicom"'})
                response.raise_for_status()
                for k, part in enumerate(client._decode_multipart_message(response, stream=True)):
                    (out / f"{uid}_{k}.dcm").write_bytes(part)

        def medres_pull(out: Path) -> None:
            web = DicomWeb(server.dicomweb, Credentials(server.user, server.password), workers=args.workers)
            result = pull(web, out, filters={"StudyInstanceUID": study}, workers=args.workers, progress=False)
            assert result.fetched == n and not result.short

        print(f"{n} instances ({args.series} series x {args.instances}, CT_small 128x128), "
              f"best of {args.repeats} (the methods take turns, so load from other work falls on all)")
        methods = {"retrieve_series": by_series, "one at a time": one_at_a_time,
                   f"medres pull --workers {args.workers}": medres_pull, "bytes only (floor)": bytes_only}
        best = dict.fromkeys(methods, float("inf"))
        for r in range(args.repeats):
            for k, (name, fn) in enumerate(methods.items()):
                out = tmp / f"out_{k}_{r}"
                out.mkdir()
                start = time.perf_counter()
                fn(out)
                best[name] = min(best[name], time.perf_counter() - start)
                assert len(list(out.rglob("*.dcm"))) == n
        rates = {name: n / s for name, s in best.items()}
        for name, s in best.items():
            print(f"  {name:28s} {s:6.2f} s  {n / s:7.1f} instances/s")
        pull_rate = rates[f"medres pull --workers {args.workers}"]
        print(f"medres pull / retrieve_series = {pull_rate / rates['retrieve_series']:.2f}x; "
              f"/ one at a time = {pull_rate / rates['one at a time']:.2f}x  (cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
