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


def test_tls_is_required_unless_insecure_is_explicit(tmp_path: Path) -> None:
    from lungct.errors import ConfigError
    from lungct.federated.deploy import client_command

    with pytest.raises(ConfigError, match="--insecure"):
        client_command("127.0.0.1:9092", tmp_path, 0)
    assert "--insecure" in client_command("127.0.0.1:9092", tmp_path, 0, insecure=True)


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


def _certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (PEM files), made with cryptography."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("lungct test CA")).issuer_name(name("lungct test CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


class Federation:
    """The server and client processes of one test, with the server's output collected."""

    def __init__(
        self, sites: dict[str, Path], out: Path, extra: list[str], tls: dict[str, Path] | None = None
    ) -> None:
        security = (
            ["--ca-cert", str(tls["ca"]), "--cert", str(tls["cert"]), "--key", str(tls["key"])]
            if tls
            else ["--insecure"]
        )
        self.client_security = ["--ca-cert", str(tls["ca"])] if tls else ["--insecure"]
        self.port = _free_port()
        self.lines: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.server = subprocess.Popen(
            [sys.executable, "-m", "lungct", "federated", "server", "--data", str(sites["heldout"]),
             "--out", str(out), "--sites", "2", "--local-epochs", "1", *security,
             "--port", str(self.port), *TRAIN, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._collect, daemon=True).start()
        self.clients = [self._client(sites, k, env) for k in range(2)]

    def _client(self, sites: dict[str, Path], k: int, env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "lungct", "federated", "client", "--data", str(sites[f"site{k}"]),
             "--site", str(k), "--superlink", f"127.0.0.1:{self.port}", *self.client_security,
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


def test_server_and_two_clients_as_processes_over_tls_train_a_usable_model(sites, tmp_path: Path) -> None:
    from lungct.model.predictor import Predictor

    out = tmp_path / "fed"
    fed = Federation(sites, out, ["--rounds", "2"], tls=_certificates(tmp_path))
    assert fed.finish(300) == 0, "".join(fed.lines[-40:])
    assert "https://127.0.0.1" in (out / "superlink.log").read_text(), "the SuperLink served over TLS"
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
