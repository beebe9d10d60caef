"""A real federation on 127.0.0.1: `lungct federated server` (Flower SuperLink + ServerApp) and two
`lungct federated client` processes (SuperNodes + ClientApps), each site with its own phantom folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="federated extra not installed (pip install 'lungct[federated]')")

TRAIN = ["--model", "small_cnn", "--pretrained", "none", "--image-size", "32", "--lr", "0.003",
         "--n-boot", "10", "--threads", "1", "--quiet"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    """Three disjoint phantom folders: two hospitals and the coordinator's held-out groups."""
    from lungct.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("federation")
    return {
        name: write_phantom_dataset(root / name, n_patients=n, slices_per_patient=3, size=48, seed=seed)
        for name, n, seed in (("site0", 4, 11), ("site1", 4, 12), ("heldout", 6, 13))
    }


class Federation:
    """The server and client processes of one test, with the server's output collected."""

    def __init__(self, sites: dict[str, Path], out: Path, extra: list[str]) -> None:
        self.port = _free_port()
        self.lines: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.server = subprocess.Popen(
            [sys.executable, "-m", "lungct", "federated", "server", "--data", str(sites["heldout"]),
             "--out", str(out), "--sites", "2", "--local-epochs", "1", "--insecure",
             "--port", str(self.port), *TRAIN, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._collect, daemon=True).start()
        self.clients = [self._client(sites, k, env) for k in range(2)]

    def _client(self, sites: dict[str, Path], k: int, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "lungct", "federated", "client", "--data", str(sites[f"site{k}"]),
             "--site", str(k), "--superlink", f"127.0.0.1:{self.port}", "--insecure",
             "--runtime-port", str(_free_port())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip

    def _collect(self) -> None:
        assert self.server.stdout is not None
        for line in self.server.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.server.poll() is not None:
                pytest.fail(f"server never printed {text!r}:\n" + "".join(self.lines[-40:]))
            time.sleep(0.2)

    def finish(self, timeout_s: float) -> int:
        try:
            return self.server.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail("the federated server hung:\n" + "".join(self.lines[-40:]))
        finally:
            self.close()

    def close(self) -> None:
        for p in [self.server, *self.clients]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_server_and_two_clients_as_processes_train_a_usable_model(sites, tmp_path: Path) -> None:
    from lungct.model.predictor import Predictor

    out = tmp_path / "fed"
    fed = Federation(sites, out, ["--rounds", "2"])
    assert fed.finish(300) == 0, "".join(fed.lines[-40:])
    run = json.loads((out / "run.json").read_text())
    f = run["federated"]
    assert f["engine"].startswith("Flower deployment")
    assert f["sites_per_round"] == [[0, 1], [0, 1]], "both clients took part in both rounds"
    assert [r["round"] for r in f["per_round_test"]] == [0, 1, 2]
    # each site reported only its slice count: 4 patients x 3 slices x 3 classes
    assert f["site_training_slices"] == {"0": 36, "1": 36}
    m = json.loads((out / "eval/test/metrics.json").read_text())
    assert m["decision"]["slice"]["n"] > 0
    assert Predictor.from_run(out).rule.fitted_on.startswith("validation split")


def test_a_killed_client_does_not_hang_the_server(sites, tmp_path: Path) -> None:
    out = tmp_path / "fed-killed"
    fed = Federation(sites, out, ["--rounds", "2", "--min-sites", "1", "--round-timeout", "20"])
    try:
        fed.wait_for("[ROUND 1/2]", 180)
        os.killpg(fed.clients[1].pid, signal.SIGKILL)  # the SuperNode and its ClientApp
        fed.clients[1].wait()
    except BaseException:
        fed.close()
        raise
    assert fed.finish(240) == 0, "".join(fed.lines[-40:])
    f = json.loads((out / "run.json").read_text())["federated"]
    assert len(f["per_round_test"]) == 3, "both rounds ran to the end"
    assert f["sites_per_round"][-1] == [0], "the killed site is left out, the other site carries on"
