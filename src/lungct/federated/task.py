"""What one site does in a federated round, with no Flower in it: load its own slices, run lungct's
training loop (:func:`lungct.model.train.fit`) for a few local epochs from the global weights, and
return the new weights. FedProx adds its proximal term through ``fit``'s regulariser hook; FedBN keeps
the site's own batch-norm layers (:func:`batch_norm_keys`, :func:`keep_local`).
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungct.config import TrainConfig, make_config
from lungct.data.discovery import list_dataset
from lungct.data.manifest import read_manifest
from lungct.model.network import build_network
from lungct.model.registry import get_spec
from lungct.model.train import fit, load_images, predict_logits
from lungct.pipeline.training import preprocess_config

SPEC = "federation.json"
"""The simulation's description: config, data root, and each site's image paths (relative)."""


def write_spec(out: Path, cfg: TrainConfig, root: Path, sites: dict[int, list[str]]) -> Path:
    path = out / SPEC
    path.write_text(json.dumps({"config": cfg.to_dict(), "root": str(root), "sites": sites}, indent=1))
    return path


@functools.lru_cache(maxsize=4)
def site_data(spec_path: str, site: int) -> tuple[TrainConfig, np.ndarray, np.ndarray]:
    """(config, uint8 images (N, S, S), labels (N,)) of one site, read once per process."""
    spec = json.loads(Path(spec_path).read_text())
    cfg = make_config(spec["config"])
    wanted = set(spec["sites"][str(site)])
    root = Path(spec["root"])
    rows = [r for r in read_manifest(Path(spec_path).parent / "audit" / "manifest.csv") if r.path in wanted]
    pre = preprocess_config(cfg, get_spec(cfg.model).input_size)
    return (
        cfg,
        load_images([root / r.path for r in rows], pre, progress=False),
        np.array([r.label for r in rows]),
    )


@functools.lru_cache(maxsize=4)
def folder_data(config_json: str, data_dir: str) -> tuple[TrainConfig, np.ndarray, np.ndarray]:
    """(config, uint8 images (N, S, S), labels (N,)) of a site's own class-folder dataset (deployment:
    the SuperNode's ``data`` node config). The config comes from the coordinator, the images never leave."""
    cfg = make_config(json.loads(config_json))
    samples = list_dataset(Path(data_dir), cfg.class_map).samples
    pre = preprocess_config(cfg, get_spec(cfg.model).input_size)
    return (
        cfg,
        load_images([s.path for s in samples], pre, progress=False),
        np.array([s.label for s in samples]),
    )


def batch_norm_keys(model_name: str) -> frozenset[str]:
    """State-dict keys of the batch-norm layers (weights, biases, running statistics) of a model."""
    net = build_network(model_name, pretrained="none")[0]
    prefixes = [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return frozenset(k for k in net.state_dict() if any(k.startswith(p + ".") for p in prefixes))


def keep_local(
    global_state: dict[str, torch.Tensor], local_state: dict[str, torch.Tensor] | None, keys: frozenset[str]
) -> dict[str, torch.Tensor]:
    """FedBN: the global weights with this site's own values at ``keys`` (from its previous round)."""
    if not local_state:
        return global_state
    return {k: (local_state[k] if k in keys and k in local_state else v) for k, v in global_state.items()}


@torch.no_grad()
def refresh_batch_norm(
    cfg: TrainConfig, state: dict[str, torch.Tensor], images: np.ndarray, batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """Re-estimate the batch-norm running statistics of a weight set from unlabelled uint8 images
    (N, S, S). Under central DP the noise also lands on the averaged statistics (a variance can turn
    negative), so the coordinator recomputes them on its own validation images."""
    net = build_network(cfg.model, pretrained="none")[0]
    net.load_state_dict(state)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(images) == 0:
        return state
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    net.train()
    for i in range(0, len(images), batch_size):
        net(torch.as_tensor(images[i : i + batch_size])[:, None].float() / 255.0)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def proximal_term(global_state: dict[str, torch.Tensor], mu: float) -> Callable[[nn.Module], torch.Tensor]:
    """FedProx: (mu / 2) * ||w - w_global||^2 over the trainable parameters."""
    anchors = {k: v.detach().clone() for k, v in global_state.items()}

    def term(model: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for name, p in model.named_parameters():
            if p.requires_grad and name in anchors:
                total = total + (p - anchors[name]).pow(2).sum()
        return 0.5 * mu * total

    return term


def local_train(
    cfg: TrainConfig,
    global_state: dict[str, torch.Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    local_epochs: int,
    proximal_mu: float = 0.0,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global weights -> this site's weights after ``local_epochs`` of :func:`fit`; and metrics."""
    net = build_network(cfg.model, pretrained="none")[0]
    net.load_state_dict(global_state)
    local = replace(cfg, epochs=local_epochs, warmup_epochs=0.0, patience=local_epochs)
    reg = proximal_term(global_state, proximal_mu) if proximal_mu > 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        ck = [Path(tmp) / n for n in ("best.pt", "last.pt", "history.csv")]
        state = fit(net, local, (images, labels), None, *ck, progress=False, regulariser=reg)
    loss = float(state.history[-1]["train_loss"]) if state.history else float("nan")
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, {
        "train_loss": loss,
        "n": len(labels),
    }


def evaluate_state(cfg: TrainConfig, state: dict[str, torch.Tensor], images: np.ndarray) -> np.ndarray:
    """Logits (N, 3) of a weight set on cached images (the server's held-out evaluation)."""
    net = build_network(cfg.model, pretrained="none")[0]
    net.load_state_dict(state)
    return predict_logits(net, images)
