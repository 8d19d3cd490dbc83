"""DistributedDataParallel compiled with backend="purify" trains like uncompiled DDP, step by step.

Two processes on this machine, gloo, CPU. The model has the in-place ops that make distributed
training fragile: a buffer updated in place every step, ``ReLU(inplace=True)``, an in-place
residual add. Layers larger than ``bucket_cap_mb`` make DDP use several gradient buckets, so Dynamo's
DDPOptimizer splits the graph and the backend is called once per bucket graph.
"""
import logging
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

WORLD = 2
STEPS = 3
D = 512


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        # 1 MiB per layer: with bucket_cap_mb=1 (DDPOptimizer needs a cap >= its 1 MiB first
        # bucket) each layer gets its own bucket
        self.fc1 = nn.Linear(D, D)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(D, D)
        self.fc3 = nn.Linear(D, D)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        self.seen.add_(x.shape[0])
        h = self.act(self.fc1(x))
        r = self.fc2(h)
        r += h  # in-place residual on a fresh result
        return self.fc3(r.tanh_())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _CountPurified(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.graphs = 0

    def emit(self, record):
        self.graphs += "purified" in record.getMessage()


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    counter = _CountPurified()
    backend_log = logging.getLogger("fxpurify.backend")
    backend_log.setLevel(logging.DEBUG)
    backend_log.addHandler(counter)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks
        ref_net, net = Net(), Net()
        net.load_state_dict(ref_net.state_dict())
        ref = DDP(ref_net, bucket_cap_mb=1)
        ddp = DDP(net, bucket_cap_mb=1)
        compiled = torch.compile(ddp, backend="purify", options={"strict": True})
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(1 + rank)  # each rank its own data: gradients must be all-reduced
        losses = []
        for _ in range(STEPS):
            x, y = torch.randn(8, D), torch.randn(8, D)
            step_losses = []
            for model, fn, o in ((ref, ref, opt_ref), (ddp, compiled, opt)):
                o.zero_grad()
                loss = nn.functional.mse_loss(fn(x), y)
                loss.backward()
                o.step()
                step_losses.append(loss.detach())
            torch.testing.assert_close(step_losses[1], step_losses[0])
            torch.testing.assert_close(net.state_dict(), ref_net.state_dict())
            losses.append(step_losses[1].item())
        torch.save({"losses": losses, "state": net.state_dict(),
                    "graphs": counter.graphs},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_compiled_ddp_matches_uncompiled_ddp(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    # all-reduced gradients: both ranks end with the same weights, having seen different data
    torch.testing.assert_close(results[0]["state"], results[1]["state"])
    assert results[0]["losses"] != results[1]["losses"]
    for res in results:
        assert res["state"]["seen"].item() == 8 * STEPS
        assert res["graphs"] >= 2  # DDPOptimizer split the graph; each bucket graph purified
