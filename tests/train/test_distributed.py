"""DistributedDataParallel under torchrun: two CPU ranks (gloo) see disjoint data, end identical."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from services.common.store import LocalStore
from services.train.metrics import PUSHGATEWAY_ENV
from tests.train.test_metrics import running_pushgateway
from tests.train.test_pretrain import make_spec, render


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(store, spec, out: Path, home: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """tests/train/ddp_worker.py on two gloo ranks under torchrun (rank files written to ``out``)."""
    worker = Path(__file__).with_name("ddp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(worker), str(store.root), spec.model_dump_json(), str(out)]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(home), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_two_gloo_ranks_see_disjoint_data_and_end_with_identical_weights(tmp_path):
    store = LocalStore(tmp_path / "store")
    spec = make_spec(epochs=2, batch_size=8, workers=1)
    render(store, spec, train=12, val=2)
    out = tmp_path / "out"
    out.mkdir()
    with running_pushgateway(tmp_path) as gateway:
        done = run_two_ranks(store, spec, out, tmp_path, {PUSHGATEWAY_ENV: gateway} if gateway else None)
        assert done.returncode == 0, done.stderr[-3000:]
        if gateway:  # every rank pushed its epoch metrics as its own group, under its rank label
            text = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
            losses = [line for line in text.splitlines() if line.startswith("flatland_train_loss{") and 'split="train"' in line]
            assert sorted(re.search(r'rank="(\d+)"', line).group(1) for line in losses) == ["0", "1"], losses
            assert len({line.rsplit(" ", 1)[1] for line in losses}) == 1  # the loss is summed across ranks: equal
    ranks = [json.loads((out / f"keys-{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    for epoch in ("0", "1"):
        a, b = (set(r["keys"][epoch]) for r in ranks)
        assert a and b and not a & b  # disjoint shares
        assert len(ranks[0]["keys"][epoch]) == len(ranks[1]["keys"][epoch])  # same number of steps
    weights = [torch.load(out / f"weights-{r}.pt") for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # Rank 0 alone wrote the run; its checkpoint holds those same weights.
    ckpt = torch.load(store.root / f"runs/{spec.run_id('r')}/checkpoints/final.pt", weights_only=False)
    assert all(torch.equal(ckpt["state_dict"][k], weights[0][k]) for k in weights[0])
