"""Two CPU processes under torchrun (gloo): the replicas end equal, the loss falls, rank 0 alone writes,
and validation gathering counts each case once."""

from __future__ import annotations

import socket
import subprocess
import sys

import pandas as pd
import pytest
from torch.utils.data import Dataset, get_worker_info

from medres.training.distributed import gather_records
from medres.training.sampling import EpochSampler
from tests.training.train_subprocess import ROOT, SMOKE, demo_dir, env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "medres.train", "--config", str(SMOKE),
           "--output", str(out), "--fold", "0", "--no-predict",
           "--set", f"data.demo.out={demo_dir(tmp_path_factory)}",
           "--set", "cv.val_fraction=0.2", "--set", "train.epochs=4", "--set", "train.batch_size=3",
           "--set", "data.augment.enabled=false"]
    e = env()
    e["OMP_NUM_THREADS"] = "1"
    p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    fold = out / "smoke" / "fold_0"
    digests = [(fold / f"weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    m = pd.read_csv(fold / "metrics.csv")
    assert list(m["epoch"]) == [1, 2, 3, 4]  # one writer: no duplicated rows
    assert m["loss"].iloc[-1] < m["loss"].iloc[0]
    assert "2 processes (DDP)" in p.stderr


def test_padded_duplicates_are_dropped_by_index():
    # 5 cases over 2 ranks: DistributedSampler-style padding repeats index 0 on rank 1
    shares = [EpochSampler(5, shuffle=False, rank=r, world_size=2).indices() for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3, 0]]
    records = [{"index": i, "case_id": f"c{i}"} for share in shares for i in share]
    gathered = gather_records(records)
    assert [r["index"] for r in gathered] == [0, 1, 2, 3, 4]


class _WhoLoads(Dataset):
    """Index -> (index, worker id): which DataLoader worker produced each sample."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict:
        info = get_worker_info()
        return {"index": index, "worker": info.id if info is not None else -1}


def test_cohort_is_sharded_over_ranks_and_workers_without_duplicates():
    from medres.data.pipeline.datasets import LoaderSettings, build_loader

    seen = []
    for rank in (0, 1):  # the engine's sampler for each of 2 ranks, each loader with 2 worker processes
        sampler = EpochSampler(12, seed=0, epoch=3, rank=rank, world_size=2)
        loader = build_loader(_WhoLoads(), batch_size=2, shuffle=False, seed=0, epoch=3, sampler=sampler,
                              settings=LoaderSettings(num_workers=2))
        for batch in loader:
            seen += [(rank, int(w), int(i)) for i, w in zip(batch["index"], batch["worker"])]
    indices = [i for _, _, i in seen]
    assert sorted(indices) == list(range(12))  # every case once, none twice
    for rank in (0, 1):
        assert {w for r, w, _ in seen if r == rank} == {0, 1}  # both workers of each rank loaded some
    assert {i for r, _, i in seen if r == 0}.isdisjoint({i for r, _, i in seen if r == 1})
