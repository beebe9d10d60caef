"""CPU throughput of every registry model: inference and training step, in images per second.

Usage::

    python benchmarks/bench_models.py                       # all models, sizes 128 160 224
    python benchmarks/bench_models.py --models small_cnn resnet18 --sizes 160 --iters 5

Inputs are random (N, 1, S, S) float32 batches; models use random init (no download). The training
step is forward + cross-entropy + backward + AdamW update. Each figure is measured ``--iters`` times
after ``--warmup`` untimed repeats; the table gives the best (fastest) repeat, which approximates the
throughput of an otherwise idle machine, and the median, which shows the effect of any contention.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lungct.model.registry import create_model, list_models


def _seconds(step: Callable[[], None], warmup: int, iters: int) -> tuple[float, float]:
    """(best, median) wall-clock seconds of ``step``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def bench_one(
    model: nn.Module, size: int, batch: int, warmup: int, iters: int, channels_last: bool
) -> dict[str, float]:
    """Best and median images/s for inference and for a train step, one model at one input size."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def infer() -> None:
        with torch.inference_mode():
            model(x)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    model.eval()
    infer_best, infer_median = _seconds(infer, warmup, iters)
    model.train()
    train_best, train_median = _seconds(train_step, warmup, iters)
    return {
        "infer_best": batch / infer_best,
        "infer_median": batch / infer_median,
        "train_best": batch / train_best,
        "train_median": batch / train_median,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(), choices=list_models())
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 160, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, batch={args.batch}, "
        f"channels_last={args.channels_last}"
    )
    print("images/s: best (median)")
    print(f"{'model':<20} {'size':>5} {'params(M)':>9} {'inference':>16} {'train step':>16}")
    for name in args.models:
        for size in args.sizes:
            model, _ = create_model(name, pretrained="none")
            n_params = sum(p.numel() for p in model.parameters()) / 1e6
            r = bench_one(model, size, args.batch, args.warmup, args.iters, args.channels_last)
            infer = f"{r['infer_best']:.1f} ({r['infer_median']:.1f})"
            train = f"{r['train_best']:.1f} ({r['train_median']:.1f})"
            print(f"{name:<20} {size:>5} {n_params:>9.2f} {infer:>16} {train:>16}", flush=True)


if __name__ == "__main__":
    main()
