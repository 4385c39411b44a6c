"""Distributed helpers: 2 gloo ranks with DDP give the loss and gradients of one process on the global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from clipvip import losses
from clipvip.train import distributed

D_IN, D_OUT = 6, 4
SIZES = {"equal": [3, 3], "unequal": [3, 2]}


class TwoTower(nn.Module):
    """The smallest stand-in for CLIPViP: a video tower, a text tower and a learned log temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.video = nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_OUT))
        self.text = nn.Linear(D_IN, D_OUT)
        self.logit_scale = nn.Parameter(torch.tensor(losses.LOGIT_SCALE_INIT) - 2.0)

    def forward(self, video: torch.Tensor, frame: torch.Tensor, sub: torch.Tensor, cap: torch.Tensor):
        return self.video(video), self.video(frame), self.text(sub), self.text(cap)


def _global_batch(total: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    batch = {k: torch.randn(total, D_IN, generator=g) for k in ("video", "frame", "sub", "cap")}
    batch["has_caption"] = torch.tensor([True, False, True, True, True, False][:total])
    return batch


def _loss(model: nn.Module, feats, has_caption: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    v, f, s, c = feats
    total, _ = losses.ocl_loss(
        "d", video=v, frame=f, subtitle=s, caption=c, logit_scale=logit_scale, has_caption=has_caption
    )
    return total


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    got_rank, got_world, _, device = distributed.setup(backend="gloo")
    try:
        assert (got_rank, got_world, device.type) == (rank, world, "cpu")
        assert distributed.is_main() == (rank == 0)
        for layout, sizes in sorted(SIZES.items()):  # one process group for both: spawning is the slow part
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(TwoTower())
            batch = _global_batch(sum(sizes))
            start = sum(sizes[:rank])
            local = {k: v[start : start + sizes[rank]] for k, v in batch.items()}
            feats = model(local["video"], local["frame"], local["sub"], local["cap"])
            gathered = [distributed.gather_with_grad(x) for x in feats]
            has_caption = distributed.gather(local["has_caption"])
            loss = _loss(model, gathered, has_caption, model.module.logit_scale)
            loss.backward()
            mean_loss = distributed.all_reduce_mean(loss.detach())
            distributed.barrier()
            result = {
                "loss": loss.detach(),
                "mean_loss": mean_loss,
                "has_caption": has_caption,
                "grads": {n: p.grad.detach().clone() for n, p in model.module.named_parameters()},
            }
            torch.save(result, Path(out_dir) / f"{layout}-rank{rank}.pt")
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_reference(total: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = TwoTower()
    batch = _global_batch(total)
    feats = model(batch["video"], batch["frame"], batch["sub"], batch["cap"])
    loss = _loss(model, feats, batch["has_caption"], model.logit_scale)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    """Equal (3+3) and unequal (3+2) local batches; OCL variant d with a has_caption mask."""
    # spawn, not fork: a child forked from a pytest process whose OpenMP pool has already run (other
    # tests) can deadlock in its first parallel op.
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for layout, sizes in sorted(SIZES.items()):
        _check_layout(tmp_path, layout, sizes)


def _check_layout(tmp_path: Path, layout: str, sizes: list[int]) -> None:
    ref_loss, ref_grads = _single_process_reference(sum(sizes))
    results = [torch.load(tmp_path / f"{layout}-rank{r}.pt", weights_only=True) for r in range(2)]
    full_mask = _global_batch(sum(sizes))["has_caption"]
    for res in results:
        torch.testing.assert_close(res["has_caption"], full_mask)
        torch.testing.assert_close(res["loss"], ref_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res["mean_loss"], ref_loss, atol=1e-5, rtol=1e-5)
        assert set(res["grads"]) == set(ref_grads)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(res["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=f"{layout}: {name}")


def test_single_process_is_identity(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.is_distributed()
    rank, world, local, device = distributed.setup()
    assert (rank, world, local) == (0, 1, 0)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(x) is x
    assert distributed.gather(x) is x
    assert distributed.all_reduce_mean(2.5).item() == 2.5
    assert distributed.is_main() and distributed.world_size() == 1 and distributed.rank() == 0
    distributed.barrier()
    distributed.cleanup()


def test_setup_without_master_addr_fails_clearly(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        distributed.setup(backend="gloo")
