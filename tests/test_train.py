"""Training: loss goes down, checkpoints round-trip (weights_only), --resume continues."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungct.config import make_config
from lungct.errors import ModelError
from lungct.model.network import build_network
from lungct.model.train import class_weights, fit, predict_logits, set_determinism, train_step
from lungct.runs import load_checkpoint, save_checkpoint


def _toy(n=48, size=32, seed=0):
    """Separable toy data: class k has a bright square in quadrant k."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    y = np.arange(n) % 3
    for i, k in enumerate(y):
        r0, c0 = (k // 2) * size // 2, (k % 2) * size // 2
        x[i, r0 + 4 : r0 + 12, c0 + 4 : c0 + 12] = 220
    return x, y


def test_loss_goes_down_on_a_few_steps():
    set_determinism(0)
    net, _, _ = build_network("small_cnn", "none")
    x, y = _toy()
    xb = torch.from_numpy(x)[:, None].float() / 255
    yb = torch.from_numpy(y)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = [train_step(net, xb, yb, opt, loss_fn) for _ in range(25)]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_class_weights_inverse_frequency():
    w = class_weights([0, 0, 0, 1, 2, 2])
    assert w[1] > w[2] > w[0]
    assert torch.isclose(w.mean(), torch.tensor(1.0))


def test_fit_writes_checkpoints_and_resume_continues(tmp_path):
    set_determinism(0)
    x, y = _toy()
    cfg = make_config({"epochs": 2, "batch_size": 16, "patience": 10, "augment": False, "lr": 3e-3})
    net, _, _ = build_network("small_cnn", "none")
    paths = (tmp_path / "best.pt", tmp_path / "last.pt", tmp_path / "history.csv")
    state = fit(net, cfg, (x, y), (x, y), *paths, progress=False)
    assert state.epoch == 2 and len(state.history) == 2
    assert paths[2].read_text().count("\n") == 3  # header + 2 epochs
    cfg4 = make_config({"epochs": 4, "batch_size": 16, "patience": 10, "augment": False, "lr": 3e-3})
    net2, _, _ = build_network("small_cnn", "none")
    state2 = fit(net2, cfg4, (x, y), (x, y), *paths, resume=True, progress=False)
    assert state2.epoch == 4 and [r["epoch"] for r in state2.history] == [1, 2, 3, 4]
    assert paths[2].read_text().count("\n") == 5
    logits = predict_logits(net2, x)
    assert (logits.argmax(1) == y).mean() > 0.8


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    net, _, _ = build_network("small_cnn", "none")
    save_checkpoint(tmp_path / "c.pt", {"state_dict": net.state_dict(), "meta": {"epoch": 1}})
    ck = load_checkpoint(tmp_path / "c.pt")
    net2, _, _ = build_network("small_cnn", "none")
    net2.load_state_dict(ck["state_dict"])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_corrupt_or_unsafe_checkpoint_is_a_model_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {}, "evil": object()}, tmp_path / "pickle.pt")  # arbitrary object
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "pickle.pt")
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "missing.pt")


def test_focal_loss_down_weights_easy_examples():
    from lungct.model.train import FocalLoss

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    focal = FocalLoss(None, gamma=2.0)
    easy, hard = (focal(logits[i : i + 1], y[i : i + 1]) for i in range(2))
    assert easy / ce[0] < hard / ce[1] < 1.0  # the confident example loses more of its weight
    assert torch.isclose(FocalLoss(None, gamma=0.0)(logits, y), ce.mean())


def test_sampler_balancing_trains(tmp_path):
    set_determinism(0)
    x, y = _toy()
    cfg = make_config({"epochs": 1, "batch_size": 16, "balance": "sampler", "augment": False})
    net, _, _ = build_network("small_cnn", "none")
    paths = (tmp_path / "best.pt", tmp_path / "last.pt", tmp_path / "history.csv")
    state = fit(net, cfg, (x, y), (x, y), *paths, progress=False)
    assert state.epoch == 1 and np.isfinite(state.history[0]["train_loss"])
