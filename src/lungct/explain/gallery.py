"""A run's explanation report: overlays, gallery.html and the checks of :mod:`lungct.explain_checks`.

See :func:`run_explain`; the results go to OUT/explain.json and, for the test split, into the run's
test metrics and report.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from lungct import CLASSES
from lungct.data.discovery import resolve_data_dir
from lungct.data.imaging import read_image
from lungct.errors import DataError, LungctError
from lungct.explain.cam import (
    Explanation,
    class_index,
    explain_prepared,
    method_class,
    overlay_png,
    prepare_all,
)
from lungct.explain.checks import POINTING_TOLERANCE, faithfulness_prepared, pointing_scores, shortcut_energy
from lungct.fileio import atomic_text
from lungct.model.predictor import Prediction, Predictor
from lungct.model.registry import get_spec
from lungct.runs import RunPaths, find_run, read_json, write_json

log = logging.getLogger("lungct")


@dataclass(frozen=True)
class _Item:
    path: Path
    name: str
    label: int | None = None
    mask: Path | None = None


def _test_items(paths: RunPaths, data: Path | None) -> list[_Item]:
    """The run's test split (split.csv) found under ``data`` or the data folder in config.yaml."""
    from lungct.config import load_config
    from lungct.data.phantoms import MASK_FOLDER
    from lungct.data.splits import read_split

    root = resolve_data_dir(data if data is not None else load_config(paths.config).data)
    assignment = read_split(paths.split)
    with paths.split.open(newline="", encoding="utf-8") as fh:
        labels = {
            r["path"]: CLASSES.index(r["class"]) for r in csv.DictReader(fh) if r.get("class") in CLASSES
        }
    items = []
    for rel in (r for r, split in assignment.items() if split == "test" and (root / r).is_file()):
        mask = (root / MASK_FOLDER / rel).with_suffix(".png")
        items.append(_Item(root / rel, rel, labels.get(rel), mask if mask.is_file() else None))
    if not items:
        raise DataError(
            f"none of the test-split images in {paths.split} exist under {root}; "
            "pass --data with the folder this run was trained on"
        )
    return items


def _select(items: list[_Item], preds: list[Prediction], max_images: int, seed: int) -> list[int]:
    """Up to ``max_images`` indices in gallery order: wrong predictions (at most half unless others run
    out), then correct and unlabelled ones drawn class by class in seeded random order; each group
    most confident first."""
    if max_images < 1:
        raise LungctError(f"max_images must be >= 1, got {max_images}")
    is_wrong = [it.label is not None and it.label != p.label for it, p in zip(items, preds, strict=True)]
    wrong = sorted(np.flatnonzero(is_wrong), key=lambda i: -float(preds[i].probs.max()))
    rng = np.random.default_rng(seed)
    pools = [
        rng.permutation([i for i, it in enumerate(items) if it.label == c and not is_wrong[i]])
        for c in [*range(len(CLASSES)), None]
    ]
    fill = [int(p[k]) for k in range(max(len(p) for p in pools)) for p in pools if k < len(p)]
    n_wrong = min(len(wrong), max(max_images // 2, max_images - len(fill)))
    rest = sorted(fill[: max_images - n_wrong], key=lambda i: (items[i].label is None, -preds[i].probs.max()))
    return [int(i) for i in wrong[:n_wrong]] + rest


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lungct explanations</title>
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}} .grid{{display:flex;flex-wrap:wrap;gap:1em}}
.card{{border:1px solid #ccc;border-radius:6px;padding:.5em}} .card h3{{font-size:1em;margin:.2em 0}}
figure{{display:inline-block;margin:.2em}} figure img{{width:300px;height:auto}}
pre{{background:#f4f4f4;padding:.5em;overflow:auto;font-size:.8em}}</style></head><body>
<h1>Explanations</h1><p>{intro}</p><p><b>Heat maps show where the network looked, not where disease is;
they are a plausibility check, not a localisation.</b></p>{body}
<h2>Checks</h2><pre>{checks}</pre></body></html>
"""


def _card(item: _Item, pred: Prediction, overlays: dict[str, str]) -> str:
    probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(CLASSES, pred.probs, strict=True))
    truth = CLASSES[item.label] if item.label is not None else "unknown"
    figs = "".join(
        f'<figure><img src="{_esc(src)}" alt="{_esc(m)} heatmap"><figcaption>{_esc(m)}</figcaption></figure>'
        for m, src in overlays.items()
    )
    return (
        f'<div class="card"><h3>{_esc(item.name)}</h3><p>true: <b>{_esc(truth)}</b> · predicted: '
        f"<b>{_esc(pred.class_name)}</b> ({pred.probs.max():.3f}) · decision: {_esc(pred.decision)}"
        f"<br><small>{_esc(probs)}</small></p>{figs}</div>"
    )


def _gallery(out: Path, cards: list[tuple[_Item, Prediction, dict[str, str]]], result: dict[str, Any]) -> str:
    """Write gallery.html (wrong, then correct predictions, most confident first); returns its name."""
    groups: dict[str, list[str]] = {
        "Wrong predictions": [],
        "Correct predictions": [],
        "Unlabelled images": [],
    }
    for item, pred, ov in sorted(cards, key=lambda c: -float(c[1].probs.max())):
        ok = item.label == pred.label
        key = (
            "Unlabelled images"
            if item.label is None
            else "Correct predictions"
            if ok
            else "Wrong predictions"
        )
        groups[key].append(_card(item, pred, ov))
    body = "".join(
        f"<h2>{k} ({len(v)})</h2><div class='grid'>{''.join(v)}</div>" for k, v in groups.items() if v
    )
    checks = {k: result[k] for k in ("faithfulness", "pointing_game", "shortcut_energy") if k in result}
    intro = (
        f"Methods: {', '.join(result['methods'])}; explained class: {result['target']}; "
        f"{result['n_images']} images ({result['source']}); 'wrong' means the arg-max class is not the "
        "true class (the thresholded decision is shown beside it)."
    )
    page = _PAGE.format(intro=_esc(intro), body=body, checks=_esc(json.dumps(checks, indent=1)))
    atomic_text(out / "gallery.html", page)
    return "gallery.html"


def _write_overlays(
    out: Path, items: list[_Item], imgs: list[np.ndarray], expl: dict[str, list[Explanation]]
) -> list[dict[str, str]]:
    """overlays/NNN_<stem>_<method>.png for every image and method (older ones are removed first);
    returns the relative paths."""
    for old in (out / "overlays").glob("[0-9][0-9][0-9]_*.png"):
        old.unlink()
    links: list[dict[str, str]] = []
    for k, (item, img) in enumerate(zip(items, imgs, strict=True)):
        links.append({})
        for m, ex in expl.items():
            e = ex[k]
            stem = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{k:03d}_{Path(item.name).stem}_{m.replace('+', 'p')}")
            p = e.prediction.probs[CLASSES.index(e.target_class)]
            overlay_png(
                img, e.heatmap, out / "overlays" / f"{stem}.png", title=f"{m}: {e.target_class} (p={p:.2f})"
            )
            links[k][m] = f"overlays/{stem}.png"
    return links


def _checks(
    predictor: Predictor,
    x: torch.Tensor,
    items: list[_Item],
    imgs: list[np.ndarray],
    expl: dict[str, list[Explanation]],
    classes: list[str],
    n_steps: int,
    seed: int,
) -> dict[str, Any]:
    """Faithfulness, shortcut energy and (with lesion masks) the pointing game for every method."""
    targets = [CLASSES.index(e.target_class) for e in next(iter(expl.values()))]
    saliency = {m: [e.input_heatmap for e in ex] for m, ex in expl.items()}
    res: dict[str, Any] = {
        "faithfulness": faithfulness_prepared(predictor, x, saliency, targets, n_steps, seed),
        "shortcut_energy": {
            m: shortcut_energy([e.heatmap for e in ex], imgs, classes) for m, ex in expl.items()
        },
    }
    masks = {k: np.array(Image.open(it.mask).convert("L")) > 127 for k, it in enumerate(items) if it.mask}
    lesion = [k for k, m in masks.items() if m.any() and m.shape == imgs[k].shape]
    if lesion:
        res["pointing_game"] = {
            m: pointing_scores(
                [ex[k].heatmap for k in lesion], [masks[k] for k in lesion], POINTING_TOLERANCE, seed=seed
            )
            for m, ex in expl.items()
        }
    return res


def run_explain(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    images: Sequence[Path] | None = None,
    data: Path | None = None,
    methods: Sequence[str] = ("gradcam", "gradcam++", "eigencam"),
    target: str | None = None,
    max_images: int = 48,
    progress: bool = True,
    seed: int = 0,
    n_steps: int = 10,
) -> dict[str, Any]:
    """Explain a run's test split (or ``images``): overlays, gallery.html, faithfulness, shortcut energy
    and, where lesion masks exist, the pointing game. Results are written to OUT/explain.json; for the
    test split also under "explain" in RUN/eval/test/metrics.json (merged), and the report is refreshed.
    ``out_dir`` defaults to RUN/eval/test/explain. Returns the results."""
    t0 = time.time()
    paths = find_run(run_dir)
    methods = list(dict.fromkeys(methods))
    for m in methods:
        method_class(m)
    tgt = class_index(target)
    predictor = Predictor.from_run(paths.root)
    out = Path(out_dir) if out_dir is not None else paths.eval_dir("test") / "explain"
    items = [_Item(Path(p), Path(p).name) for p in images] if images is not None else _test_items(paths, data)
    if not items:
        raise DataError("no images to explain")
    preds = predictor.predict_paths([it.path for it in items], progress=progress)
    sel = _select(items, preds, max_images, seed)  # the gallery: mistakes first, for a reader
    rng = np.random.default_rng(seed + 1)  # the checks: a random sample, blind to the predictions
    sample = sorted(rng.choice(len(items), size=min(len(items), max_images), replace=False).tolist())
    union = sorted(set(sel) | set(sample))
    n_all = len(items)
    items, preds = [items[i] for i in union], [preds[i] for i in union]
    imgs = [read_image(it.path, predictor.pre.window)[0] for it in items]
    x, geoms = prepare_all(predictor, imgs)
    bar = tqdm(methods, desc="explain", unit="method", disable=not progress)
    expl = {m: explain_prepared(predictor, x, geoms, m, [tgt] * len(imgs)) for m in bar}
    classes = [
        CLASSES[it.label] if it.label is not None else p.class_name
        for it, p in zip(items, preds, strict=True)
    ]
    pos = {i: k for k, i in enumerate(union)}
    chk = [pos[i] for i in sample]
    result: dict[str, Any] = {
        "methods": methods,
        "target": target or "predicted class",
        "n_images": len(sample),
        "n_gallery": len(sel),
        "sample": f"checks on a seeded random sample of {len(sample)} of {n_all} "
        f"{'test-split' if images is None else 'given'} images (not the gallery's selection)",
        "source": "test split" if images is None else "given images",
        "layer": get_spec(predictor.model_name).cam_layer,
        **_checks(
            predictor,
            x[chk],
            [items[k] for k in chk],
            [imgs[k] for k in chk],
            {m: [ex[k] for k in chk] for m, ex in expl.items()},
            [classes[k] for k in chk],
            n_steps,
            seed,
        ),
    }
    gal = [pos[i] for i in sel]
    items, preds, imgs = [items[k] for k in gal], [preds[k] for k in gal], [imgs[k] for k in gal]
    expl = {m: [ex[k] for k in gal] for m, ex in expl.items()}
    links = _write_overlays(out, items, imgs, expl)
    result["gallery"] = _gallery(out, list(zip(items, preds, links, strict=True)), result)
    result["seconds"] = round(time.time() - t0, 1)
    write_json(out / "explain.json", result)
    if images is None:
        metrics_path = paths.eval_dir("test") / "metrics.json"
        metrics = read_json(metrics_path) if metrics_path.is_file() else {}
        write_json(metrics_path, {**metrics, "explain": result})
    return result
