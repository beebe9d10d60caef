"""What one site does in a federated round, with no Flower in it: load its own slices, run lungct's
training loop (:func:`lungct.model.train.fit`) for a few local epochs from the global weights, and
return the new weights. FedProx adds its proximal term through ``fit``'s regulariser hook.
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
