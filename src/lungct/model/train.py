"""Training: image cache, the single training step, the epoch loop with early stopping and resume.

The training step (:func:`train_step`) and :func:`predict_logits` know nothing of run folders or
CLI options, so other orchestrators (cross-validation, federated clients) reuse them unchanged.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler
from tqdm.auto import tqdm

from lungct import CLASSES
from lungct.config import TrainConfig
from lungct.data.imaging import read_image
from lungct.data.transforms import Augment, PreprocessConfig, preprocess
from lungct.errors import ConfigError
from lungct.fileio import atomic_text_writer
from lungct.model import distributed
from lungct.runs import load_checkpoint, save_checkpoint

log = logging.getLogger("lungct")


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and torch once, at the entry point."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads for torch (default: all cores, at most 8). Returns the count."""
    n = threads or min(8, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def load_images(
    paths: Sequence[Path], pre: PreprocessConfig, progress: bool = True, workers: int | None = None
) -> np.ndarray:
    """Decode and preprocess once: uint8 (N, S, S) (quantised [0, 1] images, 43 MB for 869 x 224 px)."""

    def one(p: Path) -> np.ndarray:
        img, _ = read_image(p, pre.window)
        out, _ = preprocess(img, pre)
        return np.round(out * 255).astype(np.uint8)

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(one, paths)
        arrs = list(tqdm(it, total=len(paths), desc="decode+preprocess", unit="img", disable=not progress))
    return np.stack(arrs) if arrs else np.zeros((0, pre.size, pre.size), np.uint8)


class SliceDataset(Dataset):
    """Cached slices: item i -> (float32 (1, S, S) in [0, 1], int label)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], augment: Callable | None = None) -> None:
        self.images = torch.from_numpy(images)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i][None].float() / 255.0
        if self.augment is not None:
            x = self.augment(x)
        return x, self.labels[i]


def class_weights(labels: Sequence[int], n_classes: int = len(CLASSES)) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1: float32 (n_classes,). Absent classes get 0."""
    counts = np.bincount(np.asarray(labels), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return torch.tensor(w / max(w[w > 0].mean(), 1e-12), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multi-class focal loss (gamma >= 0; gamma 0 is weighted cross-entropy with smoothing)."""

    def __init__(self, weight: torch.Tensor | None, gamma: float, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)
        self.gamma, self.smoothing = gamma, label_smoothing

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, weight=self.weight, reduction="none", label_smoothing=self.smoothing)
        if self.gamma == 0:
            denom = self.weight[y].sum() if self.weight is not None else torch.tensor(float(len(y)))
            return ce.sum() / denom.clamp_min(1e-12)
        pt = torch.softmax(logits, 1).gather(1, y[:, None])[:, 0].clamp(1e-6, 1)
        return ((1 - pt) ** self.gamma * ce).mean()


def make_loss(cfg: TrainConfig, train_labels: Sequence[int]) -> nn.Module:
    weight = class_weights(train_labels) if cfg.balance == "weights" else None
    return FocalLoss(weight, cfg.focal_gamma, cfg.label_smoothing)


def freeze_early(model: nn.Module, fraction: float) -> int:
    """Freeze the first ``fraction`` of parameter tensors (input side first); returns how many."""
    params = list(model.parameters())
    n = int(len(params) * fraction)
    for p in params[:n]:
        p.requires_grad_(False)
    return n


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    regulariser: Callable[[nn.Module], torch.Tensor] | None = None,
) -> float:
    """One optimisation step on a batch x (N, 1, S, S) in [0, 1], y (N,). Returns the batch loss.

    ``regulariser(model)`` is added to the loss when given (e.g. FedProx's proximal term)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    if regulariser is not None:
        loss = loss + regulariser(model)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return float(loss.detach())


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Logits float32 (N, C) for cached uint8 (N, S, S) or float (N, 1, S, S) [0, 1] images."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        b = torch.as_tensor(images[i : i + batch_size])
        b = b[:, None].float() / 255.0 if b.dtype == torch.uint8 else b.float()
        out.append(model(b.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out).numpy() if out else np.zeros((0, len(CLASSES)), np.float32)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0.01."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


@dataclass
class FitState:
    """What the loop carries between epochs (and what --resume restores)."""

    epoch: int = 0
    best_score: float = -math.inf
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0


def _score(cfg: TrainConfig, val_loss: float, val_bacc: float) -> float:
    return -val_loss if cfg.monitor == "val_loss" else val_bacc


def _val_stats(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, loss_fn: nn.Module, batch_size: int
) -> tuple[float, float, float]:
    from sklearn.metrics import balanced_accuracy_score

    logits = torch.from_numpy(predict_logits(model, images, batch_size))
    y = torch.as_tensor(labels)
    loss = float(F.cross_entropy(logits, y))
    pred = logits.argmax(1).numpy()
    return loss, float((pred == labels).mean()), float(balanced_accuracy_score(labels, pred))


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    ckpt_best: Path,
    ckpt_last: Path,
    history_csv: Path,
    resume: bool = False,
    progress: bool = True,
    meta: dict | None = None,
    regulariser: Callable[[nn.Module], torch.Tensor] | None = None,
) -> FitState:
    """Train with AdamW + warm-up/cosine; saves best/last checkpoints after every epoch.

    With ``val`` (uint8 images (N, S, S), labels (N,)), the best epoch by ``cfg.monitor`` is kept and
    training stops after ``cfg.patience`` epochs without improvement. Without ``val`` (cross-fitting,
    where every training group is used), all ``cfg.epochs`` epochs run and best = last.
    """
    model = model.to(memory_format=torch.channels_last)
    ds = SliceDataset(train[0], train[1], Augment() if cfg.augment else None)
    n_proc = distributed.world_size()
    sampler: Sampler | None = None
    if cfg.balance == "sampler":
        if n_proc > 1:
            raise ConfigError("balance=sampler is not supported with several processes; use weights or none")
        w = class_weights(train[1])[torch.as_tensor(train[1])]
        sampler = WeightedRandomSampler(w.double(), num_samples=len(ds), replacement=True)
    elif n_proc > 1:  # each process sees its own shard; the global batch stays cfg.batch_size
        sampler = DistributedSampler(
            ds, n_proc, distributed.rank(), shuffle=True, seed=cfg.seed, drop_last=True
        )
    batch = max(1, cfg.batch_size // n_proc)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(ds) > cfg.batch_size,
        num_workers=0,
    )
    loss_fn = make_loss(cfg, train[1])
    if cfg.freeze_fraction > 0:
        log.info("froze %d parameter tensors", freeze_early(model, cfg.freeze_fraction))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * max(1, len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, int(cfg.warmup_epochs * len(loader))))
    state = FitState()
    if resume and ckpt_last.is_file():
        state = _restore(ckpt_last, model, opt, sched)
        log.info("resumed from %s at epoch %d", ckpt_last, state.epoch)
    trained = distributed.wrap(model)  # the plain ``model`` shares its parameters: checkpoints use it
    t0 = time.time()
    while state.epoch < cfg.epochs and state.bad_epochs < cfg.patience:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(state.epoch)
        row = _run_epoch(trained, loader, opt, sched, loss_fn, state.epoch, cfg, progress, regulariser)
        if val is not None:
            v_loss, v_acc, v_bacc = _val_stats(model, val[0], val[1], loss_fn, 2 * cfg.batch_size)
            row.update(val_loss=v_loss, val_accuracy=v_acc, val_balanced_accuracy=v_bacc)
            score = _score(cfg, v_loss, v_bacc)
        else:
            v_loss, v_bacc, score = math.nan, math.nan, float(state.epoch)
        state.epoch += 1
        state.history.append(row)
        improved = score > state.best_score + 1e-6
        if improved:
            state.best_score, state.bad_epochs = score, 0
            save_checkpoint(
                ckpt_best, {"state_dict": model.state_dict(), "meta": {**(meta or {}), "epoch": state.epoch}}
            )
        else:
            state.bad_epochs += 1
        _write_history(history_csv, state.history)
        _save_last(ckpt_last, model, opt, sched, state)
        log.info(
            "epoch %d/%d train_loss %.4f val_loss %.4f val_bacc %.3f%s",
            state.epoch,
            cfg.epochs,
            row["train_loss"],
            v_loss,
            v_bacc,
            " *" if improved else "",
        )
        if distributed.any_rank(bool(cfg.max_minutes) and (time.time() - t0) / 60 > cfg.max_minutes):
            log.warning("stopping early: max_minutes=%.1f reached", cfg.max_minutes)
            break
    return state


def _run_epoch(
    model, loader, opt, sched, loss_fn, epoch: int, cfg: TrainConfig, progress: bool, regulariser=None
) -> dict:
    t = time.time()
    losses = []
    bar = tqdm(
        loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress, leave=False
    )
    for x, y in bar:
        x = x.contiguous(memory_format=torch.channels_last)
        losses.append(train_step(model, x, y, opt, loss_fn, regulariser))
        sched.step()
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    return {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "lr": float(opt.param_groups[0]["lr"]),
        "seconds": round(time.time() - t, 2),
    }


def _save_last(path: Path, model, opt, sched, state: FitState) -> None:
    save_checkpoint(
        path,
        {
            "state_dict": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": state.epoch,
            "best_score": state.best_score,
            "bad_epochs": state.bad_epochs,
            "history": state.history,
            "torch_rng": torch.get_rng_state(),
        },
    )


def _restore(path: Path, model, opt, sched) -> FitState:
    ck = load_checkpoint(path)
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["torch_rng"])
    return FitState(int(ck["epoch"]), float(ck["best_score"]), int(ck["bad_epochs"]), list(ck["history"]))


def _write_history(path: Path, rows: list[dict]) -> None:
    keys = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr", "seconds"]
    with atomic_text_writer(path) as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
