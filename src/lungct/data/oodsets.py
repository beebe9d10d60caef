"""Generated and bundled non-CT images used to measure the out-of-distribution guard.

Every generator returns a list of encoded files (``bytes``: PNG or JPEG), because the guard looks at
the upload as sent (colour is checked before grey conversion). Sets are seeded and small; they exist
to put a number on :mod:`lungct.data.ood`, not to train anything.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

WORDS: tuple[str, ...] = (
    "patient", "report", "findings", "lung", "window", "contrast", "series", "slice", "nodule", "follow",
    "imaging", "the", "of", "and", "results", "table", "page", "total", "date", "review", "summary",
    "invoice", "order", "shipping", "normal", "benign", "malignant",
)  # fmt: skip


def encode(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """uint8 (H, W) or (H, W, 3), or float in [0, 1] -> encoded PNG/JPEG bytes."""
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(96, 384)), int(rng.integers(96, 384))


def _fmt(rng: np.random.Generator) -> str:
    return "PNG" if rng.uniform() < 0.5 else "JPEG"


def blank(rng: np.random.Generator) -> bytes:
    """All black or all white."""
    return encode(np.full(_size(rng), 255 if rng.uniform() < 0.5 else 0, np.uint8), _fmt(rng))


def constant_grey(rng: np.random.Generator) -> bytes:
    """One grey level, with faint sensor-like noise half of the time."""
    arr = np.full(_size(rng), rng.uniform(0.1, 0.9), np.float32)
    if rng.uniform() < 0.5:
        arr += rng.normal(0, 0.005, arr.shape).astype(np.float32)
    return encode(np.clip(arr, 0, 1), _fmt(rng))


def uniform_noise(rng: np.random.Generator) -> bytes:
    return encode(rng.uniform(0, 1, _size(rng)).astype(np.float32), _fmt(rng))


def gaussian_noise(rng: np.random.Generator) -> bytes:
    arr = rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.25), _size(rng))
    return encode(np.clip(arr, 0, 1).astype(np.float32), _fmt(rng))


def colour_gradient(rng: np.random.Generator) -> bytes:
    """A photo-like RGB picture: smooth colour gradients plus a few soft blobs."""
    h, w = _size(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    chans = []
    for _ in range(3):
        c = rng.uniform(0, 1) + rng.uniform(-0.6, 0.6) * xx + rng.uniform(-0.6, 0.6) * yy
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            c = c + rng.uniform(-0.5, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        chans.append(c)
    return encode(np.clip(np.stack(chans, axis=-1), 0, 1).astype(np.float32), _fmt(rng))


def chest_xray_like(rng: np.random.Generator) -> bytes:
    """A frontal chest projection look: torso filling the height, grey lung fields, bright mediastinum.

    Lung fields are tall ovals darker than soft tissue but brighter than the air beside the body;
    the abdomen below the diaphragm is bright. No ribs. Half of them sit on a black frame (as exported
    by some viewers), so the torso does not touch the image edge.
    """
    h = int(rng.integers(224, 448))
    w = int(h * rng.uniform(0.8, 1.2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    img = np.full((h, w), rng.uniform(0.02, 0.12), np.float32)
    half = 0.30 + rng.uniform(0, 0.12) + 0.1 * np.clip(yy - 0.15, 0, 1)  # torso widens below shoulders
    torso = np.abs(xx - 0.5) < half
    neck = (np.abs(xx - 0.5) < 0.09) & (yy < 0.15)
    img[torso & (yy > rng.uniform(0.05, 0.14))] = rng.uniform(0.6, 0.8)
    img[neck] = rng.uniform(0.6, 0.8)
    lung_grey = rng.uniform(0.3, 0.5)
    for side in (-1, 1):
        cx, cy = 0.5 + side * rng.uniform(0.14, 0.2), rng.uniform(0.42, 0.5)
        ax, ay = rng.uniform(0.09, 0.13), rng.uniform(0.23, 0.3)
        lung = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        img[lung] = lung_grey + 0.1 * (yy[lung] - cy)  # slightly brighter towards the bases
    heart = ((xx - 0.5 - rng.uniform(0, 0.06)) / 0.12) ** 2 + ((yy - 0.62) / 0.12) ** 2 <= 1
    img[heart | ((np.abs(xx - 0.5) < 0.05) & (yy < 0.6))] = rng.uniform(0.75, 0.9)
    img = ndimage.gaussian_filter(img, sigma=h / 120) + rng.normal(0, 0.015, img.shape)
    if rng.uniform() < 0.5:
        img = np.pad(img, int(h * rng.uniform(0.05, 0.2)), constant_values=0.0)
    return encode(np.clip(img, 0, 1).astype(np.float32), _fmt(rng))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: a fixed-size bitmap font
        return ImageFont.load_default()


def text_page(rng: np.random.Generator) -> bytes:
    """A rendered document: lines of words, dark on light paper or light on a dark screen."""
    h, w = int(rng.integers(256, 512)), int(rng.integers(256, 512))
    dark_mode = rng.uniform() < 0.3
    bg, fg = (20, 230) if dark_mode else (int(rng.integers(225, 256)), int(rng.integers(0, 60)))
    im = Image.new("L", (w, h), bg)
    draw = ImageDraw.Draw(im)
    size = int(rng.integers(10, 22))
    font = _font(size)
    y = int(rng.integers(5, 30))
    while y < h - size:
        line = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))
        draw.text((int(rng.integers(5, 30)), y), line, fill=fg, font=font)
        y += int(size * rng.uniform(1.3, 2.0))
    return encode(np.asarray(im), _fmt(rng))


def _augment(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop (60-100 %), flip and 90-degree turn of a bundled picture."""
    h, w = arr.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = arr[y0 : y0 + ch, x0 : x0 + cw]
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.rot90(out, int(rng.integers(0, 4))))


def _sample(name: str) -> str:
    import matplotlib.cbook as cbook

    return str(cbook.get_sample_data(name, asfileobj=False))


def photo_colour(rng: np.random.Generator) -> bytes:
    """Crops of matplotlib's bundled colour portrait photograph."""
    arr = np.asarray(Image.open(_sample("grace_hopper.jpg")).convert("RGB"))
    return encode(_augment(arr, rng), _fmt(rng))


def photo_grey(rng: np.random.Generator) -> bytes:
    """The same photograph in grey (a colour check alone cannot catch it)."""
    arr = np.asarray(Image.open(_sample("grace_hopper.jpg")).convert("L"))
    return encode(_augment(arr, rng), _fmt(rng))


def brain_mri(rng: np.random.Generator) -> bytes:
    """Crops of matplotlib's bundled MR brain slice (256 x 256, 16-bit)."""
    with gzip.open(_sample("s1045.ima.gz")) as fh:
        raw = np.frombuffer(fh.read(), np.uint16).reshape(256, 256).astype(np.float32)
    arr = _augment(raw / max(float(raw.max()), 1.0), rng)
    return encode(arr, _fmt(rng))


def terrain(rng: np.random.Generator) -> bytes:
    """Elevation maps bundled with matplotlib, shown as grey images."""
    with np.load(_sample("jacksboro_fault_dem.npz")) as z:
        dem = z["elevation"].astype(np.float32)
    dem = (dem - dem.min()) / max(float(np.ptp(dem)), 1e-6)
    return encode(_augment(dem, rng), _fmt(rng))


def chart(rng: np.random.Generator) -> bytes:
    """A rendered line or bar chart (a screenshot-like figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(rng.uniform(3, 6), rng.uniform(2.5, 5)), dpi=72)
    ax = fig.add_subplot()
    x = np.arange(20)
    if rng.uniform() < 0.5:
        ax.plot(x, np.cumsum(rng.normal(size=20)), color="k")
    else:
        ax.bar(x, rng.uniform(1, 5, 20), color="0.3")
    ax.set_title("summary")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    arr = np.asarray(Image.open(buf).convert("L"))
    return encode(arr, _fmt(rng))


GENERATED: dict[str, Callable[[np.random.Generator], bytes]] = {
    "blank": blank,
    "constant_grey": constant_grey,
    "uniform_noise": uniform_noise,
    "gaussian_noise": gaussian_noise,
    "colour_gradient": colour_gradient,
    "chest_xray_like": chest_xray_like,
    "text": text_page,
}
"""Synthetic out-of-distribution sets (no files needed)."""

REAL: dict[str, Callable[[np.random.Generator], bytes]] = {
    "photo_colour": photo_colour,
    "photo_grey": photo_grey,
    "brain_mri": brain_mri,
    "terrain": terrain,
    "chart": chart,
}
"""Out-of-distribution sets built from real non-CT pictures bundled with matplotlib."""


def make_set(name: str, n: int, seed: int = 0) -> list[bytes]:
    """``n`` encoded images of the set ``name`` (a key of GENERATED or REAL)."""
    gen = {**GENERATED, **REAL}[name]
    rng = np.random.default_rng([seed, sorted({**GENERATED, **REAL}).index(name)])
    return [gen(rng) for _ in range(n)]
