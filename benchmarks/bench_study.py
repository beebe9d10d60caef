"""Time to first result for a large study on the workstation (what the page does), over loopback HTTP.

    python benchmarks/bench_study.py --run runs/main [--data DIR] [--n 117]

Zips the first ``--n`` files of the malignant class of the IQ-OTH/NCCD subset (several scans: the
page asks for ``mixed=split``), else a phantom series, and measures with the app served by uvicorn
in this process: the POST /studies answer (``explain_top=0``: what the page waits for before it shows
the case), the first slice's raw pixels and its lazy Grad-CAM (the heat map the reader sees first),
the mean time to fetch another slice's pixels and to explain another slice, and for comparison the
v1 request (three slices explained up front, one case).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import DEFAULT_DATA, _free_port


def study_zip(data: Path | None, n: int) -> tuple[bytes, str]:
    buf = io.BytesIO()
    folder = next((p for p in (data or Path("/nonexistent")).rglob("Malignant cases") if p.is_dir()), None)
    with zipfile.ZipFile(buf, "w") as zf:
        if folder is not None:
            files = sorted(
                folder.iterdir(), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0)
            )
            for p in files[:n]:
                zf.write(p, f"study/{p.name}")
        else:
            from lungct.data.oodsets import encode
            from lungct.data.phantoms import make_series

            for k, (img, _) in enumerate(make_series("malignant", n, 512, 0), start=1):
                zf.writestr(f"study/IMG{k:03d}.png", encode(img, "PNG"))
    if folder is not None:
        return buf.getvalue(), f"{min(n, len(files))} IQ-OTH/NCCD malignant files"
    return buf.getvalue(), f"{n} phantom slices (512 px)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=117)
    args = ap.parse_args()

    import uvicorn

    from lungct.model.predictor import Predictor
    from lungct.serve import create_app
    from lungct.serve.app import limit_malloc_arenas

    limit_malloc_arenas()
    app = create_app(Predictor.from_run(args.run), run_dir=args.run)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/api/v1"
    blob, what = study_zip(Path(args.data) if args.data else None, args.n)
    print(f"study: {what}, zip {len(blob) / 2**20:.1f} MB")
    with httpx.Client(timeout=600) as c:
        files = {"files": ("study.zip", blob, "application/zip")}
        c.post(f"{url}/studies?explain_top=0&mixed=split", files=files)  # warm-up
        t0 = time.perf_counter()
        r = c.post(f"{url}/studies?explain_top=0&mixed=split", files=files)
        t_result = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {r.text}")
        d = r.json()
        sid, first = d["study_id"], d["case"]["most_suspicious_slice"] or 1
        t1 = time.perf_counter()
        c.get(f"{url}/studies/{sid}/slices/{first}/pixels").raise_for_status()
        t_pixels = time.perf_counter() - t1
        ex = c.get(f"{url}/studies/{sid}/slices/{first}/explanation")
        t_first_heat = time.perf_counter() - t1
        px_times, ex_times = [], []
        big = max(d["scans"], key=lambda s: s["n_slices"]) if d["scans"] else None
        if big is not None and big["study_id"] != sid:
            sid, d = big["study_id"], c.get(f"{url}/studies/{big['study_id']}").json()
        others = [s["index"] for s in d["slices"] if s["assessed"] and s["index"] != first][:8]
        for k in others:
            t = time.perf_counter()
            c.get(f"{url}/studies/{sid}/slices/{k}/pixels").raise_for_status()
            px_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.get(f"{url}/studies/{sid}/slices/{k}/explanation")
            ex_times.append(time.perf_counter() - t)
        t2 = time.perf_counter()
        c.post(f"{url}/studies?explain_top=3&mixed=allow", files=files).raise_for_status()
        t_v1 = time.perf_counter() - t2
    sizes = sorted((s["n_slices"] for s in d["scans"]), reverse=True) or [len(d["slices"])]
    print(f"scans found: {len(sizes)} (slices per scan: {sizes})")
    print(f"time to first result (POST, all {args.n} slices decoded, grouped, predicted): {t_result:.2f} s")
    print(
        f"first slice pixels: {1000 * t_pixels:.0f} ms; + its Grad-CAM (lazy): {t_first_heat:.2f} s total "
        f"(status {ex.status_code})"
    )
    if px_times:
        print(
            f"another slice: pixels {1000 * statistics.mean(px_times):.0f} ms, Grad-CAM "
            f"{1000 * statistics.mean(ex_times):.0f} ms (mean of {len(px_times)})"
        )
    print(f"v1-style request (3 slices explained up front, one case): {t_v1:.2f} s")
    server.should_exit = True


if __name__ == "__main__":
    main()
