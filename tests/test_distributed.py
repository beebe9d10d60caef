"""Multi-process training: `lungct train --nproc 2` (torchrun, gloo on CPU) on phantoms."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

OPTS = [
    "--model", "small_cnn", "--pretrained", "none", "--image-size", "32", "--epochs", "6", "--lr", "0.003",
    "--n-boot", "10", "--quiet", "--seed", "0", "--cross-fit-folds", "0",
]  # fmt: skip


def _train(phantom_root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "lungct",
        "train",
        "--data",
        str(phantom_root),
        "--out",
        str(out),
        *OPTS,
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_two_processes_train_one_run_folder_like_one_process(phantom_root: Path, tmp_path: Path) -> None:
    ddp = _train(phantom_root, tmp_path / "runs" / "ddp", "--nproc", "2")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "distributed: rank 0 of 2 (gloo)" in ddp.stderr and "rank 1 of 2" in ddp.stderr
    one = _train(phantom_root, tmp_path / "runs" / "one", "--threads", "1")
    assert one.returncode == 0, one.stderr[-2000:]
    # Rank 0 wrote the run folder; rank 1 wrote nothing beside it.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp", "latest", "one"]
    for run in ("ddp", "one"):
        assert (tmp_path / "runs" / run / "checkpoints" / "best.pt").is_file()
    with open(tmp_path / "runs" / "ddp" / "history.csv") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 6 and losses[-1] < losses[0], "training under DDP did not reduce the loss"
    m = {
        r: json.loads((tmp_path / "runs" / r / "eval/test/metrics.json").read_text()) for r in ("ddp", "one")
    }
    assert m["ddp"]["decision"]["slice"]["n"] == m["one"]["decision"]["slice"]["n"] > 0


def _ddp_step(rank: int, init: str, out: str) -> None:
    """One process of two: the reference model and batch, half of the batch each, one backward pass."""
    import torch
    import torch.distributed as dist

    from lungct.model import distributed
    from lungct.model.network import build_network

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    net = build_network("small_cnn", pretrained="none")[0].eval()  # eval: no per-process batch statistics
    x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model = distributed.wrap(net)
    half = slice(rank * 4, rank * 4 + 4)
    torch.nn.functional.cross_entropy(model(x[half]), y[half]).backward()
    if rank == 0:
        torch.save({k: p.grad for k, p in net.named_parameters() if p.grad is not None}, out)
    dist.destroy_process_group()


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    from lungct.model.network import build_network

    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_step, args=(f"file://{tmp_path / 'rdv'}", str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    net = build_network("small_cnn", pretrained="none")[0].eval()
    x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(net(x), y).backward()
    ddp = torch.load(out, weights_only=True)
    assert ddp, "no gradients came back"
    for k, p in net.named_parameters():
        torch.testing.assert_close(ddp[k], p.grad, rtol=1e-4, atol=1e-6)
