"""Bounded soak test of the workstation on loopback: mixed good and hostile requests, memory over time.

    python benchmarks/bench_soak.py --run runs/main [--requests 1000 --clients 8 --hostile 0.2]

The server (uvicorn, one worker) runs in a child process on 127.0.0.1 (the same one
benchmarks/bench_serve.py starts). ``--clients`` threads send ``--requests`` requests in total, a share
``--hostile`` of them hostile (garbage bytes, a zip of junk, a NaN TIFF, a deflate-bomb DICOM, a blank
6000 px PNG, a wrong Host header, a cross-origin POST, two files in one field); the rest are good
slices (real IQ-OTH/NCCD JPEGs when the subset is present, else phantoms) with Grad-CAM. Prints p50 and
p95 latency per kind, good requests that failed (target 0), hostile requests answered with anything
but a 4xx/503 (target 0), and the server's resident memory at start, middle and end (target: flat
within 10 % from the middle on). Status 299 in the output means HTTP 200 with "assessed": false (the
input guard refused to diagnose it). All traffic stays on 127.0.0.1 and the run is bounded in count.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import DEFAULT_DATA, _free_port, wait_ready


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def good_slices(n: int = 20) -> list[bytes]:
    files = sorted(DEFAULT_DATA.rglob("*.jpg")) if DEFAULT_DATA.is_dir() else []
    if files:
        return [files[i * len(files) // n].read_bytes() for i in range(n)]
    from lungct.data.oodsets import encode
    from lungct.data.phantoms import make_phantom

    return [
        encode(make_phantom(k, 512, s)[0], "JPEG") for s in range(n // 3 + 1) for k in ("normal", "malignant")
    ]


def hostile_requests() -> list[tuple[str, dict]]:
    """(name, httpx request kwargs) of hostile requests, each answered by a 4xx (or 503 when busy)."""
    nan = np.full((64, 64), 0.5, np.float32)
    nan[0, 0] = np.nan
    tif = io.BytesIO()
    Image.fromarray(nan, mode="F").save(tif, format="TIFF")
    blank = io.BytesIO()
    Image.fromarray(np.zeros((6000, 6000), np.uint8)).save(blank, format="PNG")
    junkzip = io.BytesIO()
    with zipfile.ZipFile(junkzip, "w") as z:
        z.writestr("a.png", b"not a png")
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    head = buf.getvalue()
    meta_end = 132 + 12 + int.from_bytes(head[140:144], "little")
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = head[:meta_end] + b"".join(z.compress(b"\0" * 2**20) for _ in range(80)) + z.flush()
    predict = "/api/v1/predict"
    out = [
        ("garbage", {"url": predict, "files": {"file": ("x.jpg", b"\x00garbage" * 100, "image/jpeg")}}),
        ("junk zip", {"url": "/api/v1/studies", "files": [("files", ("s.zip", junkzip.getvalue(), "x"))]}),
        ("NaN TIFF", {"url": predict, "files": {"file": ("n.tif", tif.getvalue(), "image/tiff")}}),
        ("blank 6000 px PNG", {"url": predict, "files": {"file": ("b.png", blank.getvalue(), "image/png")}}),
        ("wrong Host", {"url": predict, "headers": {"Host": "evil.example"}, "files": {"file": ("a", b"x")}}),
        (
            "cross-origin POST",
            {"url": predict, "headers": {"Origin": "http://evil.example"}, "files": {"file": ("a", b"x")}},
        ),
        (
            "two files",
            {"url": predict, "files": [("file", ("a.png", blank.getvalue())), ("file", ("b.png", b"x"))]},
        ),
    ]
    out.append(("deflate bomb", {"url": predict, "files": {"file": ("b.dcm", bomb, "application/dicom")}}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--hostile", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    code = (
        "import sys, torch, uvicorn; torch.set_num_threads(int(sys.argv[3]));"
        "from lungct.serve import create_app; from lungct.serve.app import limit_malloc_arenas;"
        "from lungct.model.predictor import Predictor; limit_malloc_arenas();"
        "uvicorn.run(create_app(Predictor.from_run(sys.argv[1]), run_dir=sys.argv[1]), host='127.0.0.1',"
        "port=int(sys.argv[2]), log_level='warning', access_log=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, args.run, str(port), str(args.threads)])
    try:
        wait_ready(url, proc)
        good, bad = good_slices(), hostile_requests()
        rng = np.random.default_rng(0)
        plan = ["hostile" if rng.random() < args.hostile else "good" for _ in range(args.requests)]
        results: list[tuple[str, str, int, float]] = []
        memory = [("start", rss_mb(proc.pid))]
        lock = threading.Lock()

        def one(k: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                t0 = time.perf_counter()
                if plan[k] == "good":
                    name = "good slice"
                    r = c.post(
                        "/api/v1/predict", files={"file": ("s.jpg", good[k % len(good)], "image/jpeg")}
                    )
                else:
                    name, kw = bad[k % len(bad)]
                    kw = dict(kw)
                    r = c.post(kw.pop("url"), **kw)
                status = r.status_code
                if status == 200 and plan[k] == "hostile" and r.json().get("assessed") is False:
                    status = 299  # answered correctly: "not assessed", no diagnosis
                with lock:
                    results.append((plan[k], name, status, time.perf_counter() - t0))
                    if len(results) == args.requests // 2:
                        memory.append(("middle", rss_mb(proc.pid)))

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.requests)))
        memory.append(("end", rss_mb(proc.pid)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    good_fail = sum(1 for kind, _, s, _ in results if kind == "good" and s != 200)
    ok = {299, 503}  # 299: HTTP 200 with assessed=false (refused by the input guard); 503: busy, retry
    bad_wrong = [(n, s) for kind, n, s, _ in results if kind == "hostile" and not (400 <= s < 500 or s in ok)]
    print(f"{len(results)} requests, {args.clients} concurrent, {plan.count('hostile')} hostile")
    for name in sorted({n for _, n, _, _ in results}):
        lat = [t for _, n, _, t in results if n == name]
        codes = sorted({s for _, n, s, _ in results if n == name})
        print(
            f"  {name:20s} n={len(lat):4d}  p50 {1000 * statistics.median(lat):7.0f} ms  "
            f"p95 {1000 * float(np.percentile(lat, 95)):7.0f} ms  status {codes}"
        )
    print(
        f"good requests that failed: {good_fail}; "
        f"hostile requests not refused (4xx, 503 or not assessed): {len(bad_wrong)} {bad_wrong[:5]}"
    )
    print("server RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in memory))
    mid, end = memory[1][1], memory[-1][1]
    print(f"RSS change middle -> end: {100 * (end - mid) / mid:+.1f} %")
    return 0 if good_fail == 0 and not bad_wrong else 1


if __name__ == "__main__":
    sys.exit(main())
