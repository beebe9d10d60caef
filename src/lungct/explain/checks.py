"""Checks of how far class-activation heatmaps can be trusted, all on the calibrated probability of the
explained class:

* faithfulness: deletion / insertion AUC against a random-map baseline;
* pointing game: does the heatmap's maximum fall on the lesion mask (phantoms) vs random maps;
* shortcut energy: share of heatmap energy outside the body (couch, labels, background);
* a pointing-game benchmark on seeded phantoms with a small model trained from scratch.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lungct import CLASSES
from lungct.data.body import body_mask
from lungct.data.transforms import PreprocessConfig, preprocess
from lungct.errors import LungctError
from lungct.explain.cam import check_pair, explain_batch, explain_prepared, method_class, prepare_all
from lungct.model.predictor import Predictor
from lungct.runs import load_checkpoint

POINTING_TOLERANCE = 15 / 224
"""Pointing-game tolerance as a fraction of the image's shorter side (15 px at 224 px)."""


# ------------------------------------------------------------------------------------------------
# Faithfulness
# ------------------------------------------------------------------------------------------------

FAITHFULNESS_DEFINITION = (
    "In model-input space, pixels are ranked by saliency and the top 0, 1/n, ..., n/n of them are "
    "replaced (deletion: image -> Gaussian-blurred image, sigma = S/16) or restored (insertion: blurred -> "
    "image); the calibrated probability of the explained class is averaged over the steps (trapezoid AUC). "
    "Deletion: lower is better; insertion: higher is better. 'random' ranks pixels by a smooth random map "
    "(uniform 7x7 noise, bilinearly upsampled)."
)


def _random_map(rng: np.random.Generator, size: int) -> np.ndarray:
    low = torch.from_numpy(rng.uniform(size=(1, 1, 7, 7)).astype(np.float32))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _curve_inputs(x: np.ndarray, base: np.ndarray, order: np.ndarray, n_steps: int) -> np.ndarray:
    """Deletion then insertion inputs for one ranking: float32 (2 (n_steps + 1), S, S)."""
    ks = np.round(np.linspace(0, x.size, n_steps + 1)).astype(int)
    fx, fb = x.ravel(), base.ravel()
    dele, ins = [], []
    for k in ks:
        d, i = fx.copy(), fb.copy()
        d[order[:k]], i[order[:k]] = fb[order[:k]], fx[order[:k]]
        dele.append(d)
        ins.append(i)
    return np.stack(dele + ins).reshape(-1, *x.shape)


def faithfulness_prepared(
    predictor: Predictor,
    x: torch.Tensor,
    saliency: dict[str, list[np.ndarray]],
    targets: Sequence[int],
    n_steps: int,
    seed: int,
) -> dict[str, Any]:
    """Deletion / insertion AUCs for prepared inputs x (N, 1, S, S), ``saliency``: method -> float32
    (S, S) maps per image, ``targets``: explained class index per image; plus a random-map baseline."""
    rng = np.random.default_rng(seed)
    names = [*saliency, "random"]
    scores: dict[str, list[np.ndarray]] = {n: [] for n in names}  # per image: (deletion, insertion)
    for i, t in enumerate(targets):
        xi = x[i, 0].numpy()
        base = ndimage.gaussian_filter(xi, sigma=xi.shape[0] / 16)
        maps = [saliency[n][i] for n in saliency] + [_random_map(rng, xi.shape[0])]
        ties = rng.uniform(0, 1e-6, size=xi.size)  # random order among equal saliency (e.g. zeros)
        orders = [np.argsort(-(m.ravel() + ties), kind="stable") for m in maps]
        batch = torch.from_numpy(np.concatenate([_curve_inputs(xi, base, o, n_steps) for o in orders]))
        probs = np.concatenate(
            [predictor.calibrated_probs(batch[j : j + 32, None]) for j in range(0, len(batch), 32)]
        )
        p = probs[:, t].reshape(len(maps), 2, n_steps + 1)
        for n, curves in zip(names, p, strict=True):
            scores[n].append(np.trapezoid(curves, dx=1 / n_steps, axis=1))
    out: dict[str, Any] = {
        "definition": FAITHFULNESS_DEFINITION,
        "n_images": len(targets),
        "n_steps": n_steps,
    }
    for n in names:
        auc = np.mean(scores[n], axis=0) if scores[n] else [np.nan, np.nan]
        out[n] = {"deletion_auc": _num(auc[0]), "insertion_auc": _num(auc[1])}
        if n != "random" and len(targets) > 1:
            out[n]["vs_random"] = _paired_ci(np.array(scores[n]) - np.array(scores["random"]), rng)
    return out


def _paired_ci(diff: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> dict[str, Any]:
    """Mean method-minus-random AUC differences (n_images, 2: deletion, insertion) with percentile 95 %
    CIs from a bootstrap over images. Faithful maps: deletion difference < 0, insertion difference > 0."""
    reps = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(reps, [2.5, 97.5], axis=0)
    return {
        "deletion_diff": _num(diff[:, 0].mean()),
        "deletion_diff_ci95": [_num(lo[0]), _num(hi[0])],
        "insertion_diff": _num(diff[:, 1].mean()),
        "insertion_diff_ci95": [_num(lo[1]), _num(hi[1])],
        "ci95_method": f"bootstrap over {len(diff)} images, n_boot={n_boot}",
    }


def faithfulness(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    method: str | Sequence[str] = "gradcam",
    n_steps: int = 10,
    seed: int = 0,
    *,
    layer: str | None = None,
) -> dict[str, Any]:
    """Deletion / insertion AUC for ``method`` (one or several) and a seeded random-map baseline.

    The explained class is each image's predicted class. See :data:`FAITHFULNESS_DEFINITION`.
    """
    methods = [method] if isinstance(method, str) else list(method)
    for m in methods:
        method_class(m)
    if n_steps < 1:
        raise LungctError(f"n_steps must be >= 1, got {n_steps}")
    x, geoms = prepare_all(predictor, images)
    targets: list[int] = []
    saliency: dict[str, list[np.ndarray]] = {}
    for m in methods:
        ex = explain_prepared(predictor, x, geoms, m, [None] * len(images), layer)
        saliency[m] = [e.input_heatmap for e in ex]
        targets = [CLASSES.index(e.target_class) for e in ex]
    return faithfulness_prepared(predictor, x, saliency, targets, n_steps, seed)


def _num(x: Any) -> float | None:
    """A finite float rounded for JSON, or None."""
    v = float(x)
    return round(v, 6) if np.isfinite(v) else None


# ------------------------------------------------------------------------------------------------
# Pointing game and shortcut energy
# ------------------------------------------------------------------------------------------------


def pointing_scores(
    heatmaps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    tolerance: float,
    n_random: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Pointing-game hit rates for (H, W) heatmaps and bool lesion masks, vs seeded random maps."""
    rng = np.random.default_rng(seed)
    hits, rand, area = [], [], []
    for h, m in zip(heatmaps, masks, strict=True):
        m = np.asarray(m, dtype=bool)
        if m.shape != h.shape:
            raise LungctError(f"lesion mask {m.shape} and heatmap {h.shape} differ in shape")
        near = ndimage.distance_transform_edt(~m) <= tolerance * min(m.shape)
        hits.append(bool(near.flat[int(np.argmax(h))]))
        # The arg-max of an i.i.d. uniform random map is a uniformly drawn pixel.
        rand.append(float(near.flat[rng.integers(near.size, size=n_random)].mean()))
        area.append(float(near.mean()))
    return {
        "n_images": len(hits),
        "tolerance": round(tolerance, 4),
        "hit_rate": _num(np.mean(hits)),
        "random_hit_rate": _num(np.mean(rand)),
        "expected_random_hit_rate": _num(np.mean(area)),
    }


def pointing_game(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    method: str = "gradcam",
    *,
    targets: Sequence[str | None] | None = None,
    tolerance: float = POINTING_TOLERANCE,
    n_random: int = 200,
    seed: int = 0,
    layer: str | None = None,
) -> dict[str, Any]:
    """Share of lesion images whose heatmap maximum lies within ``tolerance`` of the lesion mask.

    ``masks``: bool (H, W) per image (images with an empty mask are skipped); ``tolerance``: fraction of
    the shorter image side (default 15 px at 224 px). ``targets``: class per image (default: predicted).
    The baseline scores ``n_random`` seeded uniform random maps per image; its expectation is the
    share of pixels within tolerance of the lesion (``expected_random_hit_rate``).
    """
    if len(masks) != len(images) or (targets is not None and len(targets) != len(images)):
        raise LungctError(
            f"need one mask (and target) per image; got {len(images)} images, {len(masks)} masks"
        )
    keep = [i for i, m in enumerate(masks) if np.asarray(m).any()]
    if not keep:
        raise LungctError("the pointing game needs at least one image with a non-empty lesion mask")
    chosen = None if targets is None else [targets[i] for i in keep]
    ex = explain_batch(predictor, [images[i] for i in keep], method, chosen, layer=layer)
    out = pointing_scores([e.heatmap for e in ex], [masks[i] for i in keep], tolerance, n_random, seed)
    return {"method": method, **out}


def shortcut_energy(
    heatmaps: Sequence[np.ndarray], images: Sequence[np.ndarray], classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Share of heatmap energy (sum of values) outside the body, mean over images, overall and per class.

    The body is :func:`lungct.data.body.body_mask`, the region whose bounding box the model's crop
    keeps (text marks and background are outside). Images without a
    detectable body or with an all-zero heatmap are left out (counted in ``n_skipped``).
    """
    shares: list[float] = []
    for h, im in zip(heatmaps, images, strict=True):
        check_pair(np.asarray(im), np.asarray(h))
        mask, total = body_mask(im), float(np.sum(h))
        shares.append(float(np.sum(h[~mask])) / total if mask is not None and total > 0 else np.nan)
    arr = np.array(shares, dtype=np.float64)
    ok = np.isfinite(arr)
    out: dict[str, Any] = {"mean": _mean(arr), "n_images": int(ok.sum()), "n_skipped": int((~ok).sum())}
    if classes is not None:
        cls = np.asarray(list(classes))
        out["per_class"] = {c: _mean(arr[cls == c]) for c in CLASSES if (cls == c).any()}
    return out


def _mean(arr: np.ndarray) -> float | None:
    """Mean of the finite values (None when there are none)."""
    return _num(np.mean(arr[np.isfinite(arr)])) if np.isfinite(arr).any() else None


# ------------------------------------------------------------------------------------------------
# Pointing-game benchmark on phantoms
# ------------------------------------------------------------------------------------------------


def phantom_set(
    n_per_class: int, size: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Seeded phantoms: (float32 (size, size) [0, 1] images, int labels (N,), bool lesion masks)."""
    from lungct.data.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    drawn = [
        (c, *make_phantom(kind, size, rng)) for _ in range(n_per_class) for c, kind in enumerate(CLASSES)
    ]
    return (
        [im.astype(np.float32) / 255.0 for _, im, _ in drawn],
        np.array([c for c, *_ in drawn]),
        [m for *_, m in drawn],
    )


def train_phantom_model(
    *,
    size: int = 128,
    n_train: int = 40,
    n_val: int = 10,
    epochs: int = 10,
    seed: int = 0,
    progress: bool = False,
    model: str = "small_cnn",
    pretrained: str = "none",
    lr: float = 5e-3,
) -> Predictor:
    """``model`` (small_cnn from scratch by default) trained on seeded phantoms (counts per class; px).

    Phantom classes differ only by their lesion (none / small nodule / large spiculated mass) while
    the anatomy is random per image, so a model that learned the task has to look at the lesion.
    """
    from lungct.config import make_config
    from lungct.model.network import build_network
    from lungct.model.train import fit, set_determinism

    set_determinism(seed)
    pre = PreprocessConfig(size=size)

    def cache(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        imgs, labels, _ = phantom_set(n, size, s)
        return np.stack([np.round(preprocess(im, pre)[0] * 255).astype(np.uint8) for im in imgs]), labels

    net, _, _ = build_network(model, pretrained=pretrained)
    pre = PreprocessConfig(size=size)
    cfg = make_config({"model": model, "pretrained": pretrained, "image_size": size, "seed": seed})
    cfg = make_config(
        {"epochs": epochs, "patience": epochs, "batch_size": 16, "lr": lr, "augment": False}, cfg
    )
    with tempfile.TemporaryDirectory() as tmp:
        best, last, hist = (Path(tmp) / n for n in ("best.pt", "last.pt", "history.csv"))
        fit(net, cfg, cache(n_train, seed), cache(n_val, seed + 1), best, last, hist, progress=progress)
        net.load_state_dict(load_checkpoint(best)["state_dict"])
    return Predictor(net, model, pre)


def run_pointing_game_benchmark(
    *, n_test: int = 20, method: str = "gradcam", seed: int = 0, **train: Any
) -> dict[str, Any]:
    """Train small_cnn on phantoms (``train``: options of :func:`train_phantom_model`), then play the
    pointing game, explaining the true class, on ``n_test`` new phantoms per class.

    Returns hit rate vs seeded random maps, test accuracy and the time taken (s).
    """
    t0 = time.time()
    predictor = train_phantom_model(seed=seed, **train)
    imgs, labels, masks = phantom_set(n_test, predictor.pre.size, seed + 2)
    acc = float(np.mean([p.label for p in predictor.predict_images(imgs)] == labels))
    pg = pointing_game(predictor, imgs, masks, method, targets=[CLASSES[y] for y in labels], seed=seed)
    return {
        "model": predictor.model_name,
        "size": predictor.pre.size,
        "test_accuracy": round(acc, 4),
        **pg,
        "seconds": round(time.time() - t0, 1),
    }
