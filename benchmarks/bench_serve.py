"""Bounded load test of the workstation on loopback: latency and throughput of /api/v1/predict.

Usage::

    python benchmarks/bench_serve.py --run runs/my_run          # a trained run folder
    python benchmarks/bench_serve.py                            # no run: UNTRAINED efficientnet_lite0
    python benchmarks/bench_serve.py --model small_cnn --requests 100 --clients 2

The server (uvicorn, one worker, ``--threads`` torch threads) runs in a child process bound to
127.0.0.1 on a free port; ``--clients`` threads send ``--requests`` POSTs in total (Grad-CAM on, the
default) with one slice: a real IQ-OTH/NCCD JPEG when the subset is present, else a 512 px phantom.
Without ``--run`` nothing is trained: the model has random weights, which costs the same time as a
trained one but its outputs mean nothing. Prints p50/p95/max latency, errors and throughput, then
stops the server. Target on 2 cores: p95 <= 500 ms, 0 errors.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "iq-othnccd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_server(args: argparse.Namespace) -> None:
    """Child process: load the model once and serve until terminated."""
    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    from lungct.model.predictor import Predictor
    from lungct.serve import create_app

    if args.run:
        predictor = Predictor.from_run(args.run)
    else:
        from lungct.data.transforms import PreprocessConfig
        from lungct.model.network import build_network
        from lungct.model.registry import get_spec

        net, _, _ = build_network(args.model, pretrained="none")
        predictor = Predictor(net, args.model, PreprocessConfig(size=get_spec(args.model).input_size))
    app = create_app(predictor, run_dir=args.run)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def sample_slice(data_dir: Path) -> tuple[bytes, str]:
    files = sorted(data_dir.rglob("*.jpg")) if data_dir.is_dir() else []
    if files:
        return files[len(files) // 2].read_bytes(), "a real IQ-OTH/NCCD JPEG slice"
    from lungct.data.oodsets import encode
    from lungct.data.phantoms import make_phantom

    return encode(make_phantom("malignant", 512, 0)[0], "JPEG"), "a 512 px phantom JPEG (real data absent)"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not become ready")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all threads) from /proc; None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def load(url: str, payload: bytes, n: int, clients: int, explain: bool) -> tuple[list[float], int, float]:
    """(latencies in s of successful requests, error count, wall seconds)."""

    def one(_: int) -> float | None:
        t = time.perf_counter()
        try:
            r = httpx.post(
                f"{url}/api/v1/predict",
                params={"explain": str(explain).lower()},
                files={"file": ("slice", payload, "application/octet-stream")},
                timeout=60,
            )
        except httpx.HTTPError:
            return None
        return (
            time.perf_counter() - t if r.status_code == 200 and r.json().get("assessed") is not None else None
        )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r is not None]
    return ok, len(results) - len(ok), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="run folder (default: untrained --model)")
    ap.add_argument("--model", default="efficientnet_lite0", help="model when no --run is given")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in the server")
    ap.add_argument("--no-explain", action="store_true", help="skip Grad-CAM")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("LUNGCT_SHARED_DATA", DEFAULT_DATA)))
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        run_server(args)
        return

    port = _free_port()
    cmd = [
        sys.executable,
        __file__,
        "--server",
        "--port",
        str(port),
        "--threads",
        str(args.threads),
        "--model",
        args.model,
    ] + (["--run", str(args.run)] if args.run else [])
    what = f"run {args.run}" if args.run else f"UNTRAINED {args.model} (random weights; nothing trained)"
    payload, desc = sample_slice(args.data)
    print(f"model: {what}; input: {desc} ({len(payload) / 1024:.0f} KB)")
    proc = subprocess.Popen(cmd)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        load(url, payload, 8, 1, not args.no_explain)  # warm-up
        cpu0 = cpu_seconds(proc.pid)
        lat, errors, wall = load(url, payload, args.requests, args.clients, not args.no_explain)
        cpu1 = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ms = sorted(1000 * x for x in lat)
    p95 = float(np.percentile(ms, 95)) if ms else float("nan")
    print(
        f"requests={args.requests} clients={args.clients} threads={args.threads} "
        f"gradcam={'off' if args.no_explain else 'on'} cpus={os.cpu_count()}"
    )
    if ms:
        print(f"latency ms: p50={statistics.median(ms):.0f} p95={p95:.0f} max={ms[-1]:.0f}")
    print(f"errors={errors} throughput={len(lat) / wall:.1f} req/s wall={wall:.1f}s")
    if cpu0 is not None and cpu1 is not None:
        per = (cpu1 - cpu0) / args.requests
        print(
            f"server CPU per request: {1000 * per:.0f} ms (contention-independent; {args.threads} cores "
            f"can serve at most ~{args.threads / per:.1f} req/s)"
        )
    busy = os.getloadavg()[0]
    print(f"load average after the run: {busy:.1f} (above {os.cpu_count()}: other work was competing)")
    verdict = "met" if ms and p95 <= 500 and errors == 0 else "NOT met"
    print(f"target p95 <= 500 ms and 0 errors: {verdict}")


if __name__ == "__main__":
    main()
