"""torchrun DDP on CPU (gloo, 2 processes) gives the same adapters as one process on the same global batches."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medad.training.distributed import all_reduce_gradients, shard, world_info

WORKER = Path(__file__).parent / "_ddp_worker.py"


def test_shard_and_single_process_noops():
    idx = torch.arange(5)
    parts = [shard(idx, r, 2).tolist() for r in range(2)]
    assert parts == [[0, 1], [2, 3, 4]]
    assert shard(idx).tolist() == idx.tolist()  # world size 1
    assert world_info().world_size == 1
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    all_reduce_gradients([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.timeout(300)
def test_torchrun_gloo_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = torch.load(tmp_path / "adapters_w1_r0.pt", weights_only=True)
    r0 = torch.load(tmp_path / "adapters_w2_r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "adapters_w2_r1.pt", weights_only=True)
    for k in one:
        assert torch.equal(r0[k], r1[k]), k  # ranks stay identical
        # Adam amplifies float rounding of near-zero gradients: compare within a fraction of one step (lr 1e-3)
        torch.testing.assert_close(r0[k], one[k], rtol=0, atol=2e-4)
    g1 = torch.load(tmp_path / "grads_w1_r0.pt", weights_only=True)
    g2 = torch.load(tmp_path / "grads_w2_r0.pt", weights_only=True)
    assert set(g1) == set(g2) and len(g1) == 14  # 8 adapters x (fc1, fc2) minus the 2 dead last-level fc2
    for k in g1:  # the all-reduced gradient of the sharded batch equals the full-batch gradient (scale included)
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-7)
    ckpt = torch.load(tmp_path / "ckpt_w2.pt", weights_only=True)
    assert ckpt["medad"]["provenance"]["world_size"] == 2
    # training moved the adapters away from the seeded init
    import medad
    from medad.training.fit import reset_adapters

    det = medad.load_detector(backbone="tiny")
    reset_adapters(det, 0)
    init = det.model.adapters.state_dict()
    init_changed = any(not torch.allclose(init[k], one[k]) for k in one)
    assert init_changed
