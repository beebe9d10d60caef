"""A real federation with Flower's own processes: `lungct federated server` runs a SuperLink and submits
the lungct Flower App to it; `lungct federated client` runs a SuperNode over one site's folder.

    coordinator:  flower-superlink  <-  flwr run (app: lungct.federated.server_app / apps)
    each site:    flower-supernode --superlink HOST:PORT --node-config 'data="SITE_DIR" site=N'

The ServerApp and ClientApps are started by the SuperLink and SuperNodes (process isolation
``subprocess``); their code is the installed lungct package, so every machine needs
``pip install 'lungct[federated]'``. Runtime dependency installation is switched off (hospital
machines are often offline). TLS is on unless ``insecure`` is asked for explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lungct.config import TrainConfig
from lungct.data.discovery import resolve_data_dir
from lungct.errors import ConfigError, LungctError
from lungct.federated.coordinator import RoundPlan

log = logging.getLogger("lungct")

CONNECTION = "lungct"
"""Name of the SuperLink connection in the private Flower configuration of a server run."""

APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "lungct-federation"
version = "1.0.0"
description = "lungct: federated training of the lung CT slice classifier"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "lungct"

[tool.flwr.app.components]
serverapp = "lungct.federated.server_app:server_app"
clientapp = "lungct.federated.apps:client_app"

[tool.flwr.app.config]
train-config = "{}"
plan = "{}"
out = ""
"""
"""The Flower App submitted to the SuperLink: components from the installed lungct package."""


@dataclass(frozen=True)
class Tls:
    """PEM files: CA certificate (both sides), server certificate and key (SuperLink only)."""

    ca_cert: Path
    cert: Path | None = None
    key: Path | None = None


class FederationError(LungctError):
    """A Flower process failed to start or a run did not finish."""


def _tool(name: str) -> str:
    """Path of a Flower executable from this Python environment."""
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.is_file() else shutil.which(name)
    if not found:
        raise FederationError(f"{name} not found: pip install 'lungct[federated]'")
    return found


def _env(flwr_home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def _tls_args(tls: Tls | None, insecure: bool, server: bool) -> list[str]:
    if insecure:
        return ["--insecure"]
    if tls is None:
        raise ConfigError(
            "TLS needs certificates (--ca-cert, and --cert/--key on the server); "
            "pass --insecure only for a test on one machine"
        )
    for f in (tls.ca_cert, tls.cert, tls.key):
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"TLS file not found: {f}")
    if not server:
        return ["--root-certificates", str(Path(tls.ca_cert).resolve())]
    if tls.cert is None or tls.key is None:
        raise ConfigError("the server needs --cert and --key besides --ca-cert")
    tls = Tls(*(Path(f).resolve() for f in (tls.ca_cert, tls.cert, tls.key)))  # the SuperLink runs elsewhere
    return [
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.cert),
        "--ssl-keyfile",
        str(tls.key),
    ]


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections; FederationError on timeout or process exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FederationError(f"the process listening on {host}:{port} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _write_config(home: Path, host: str, port: int, tls: Tls | None, insecure: bool) -> None:
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        f"[superlink.{CONNECTION}]",
        f'address = "{host}:{port}"',
    ]
    lines += (
        ["insecure = true"]
        if insecure
        else [f"root-certificates = {json.dumps(str(Path(tls.ca_cert).resolve()))}"]
    )
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def _run_config(cfg: TrainConfig, plan: RoundPlan, out: Path) -> str:
    """TOML of the run-config overrides (strings escaped as JSON, which TOML accepts)."""
    values = {
        "train-config": json.dumps(cfg.to_dict()),
        "plan": json.dumps(asdict(plan)),
        "out": str(out.resolve()),
    }
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def run_server(
    cfg: TrainConfig,
    out: str | Path,
    plan: RoundPlan,
    *,
    host: str = "127.0.0.1",
    port: int = 9092,
    tls: Tls | None = None,
    insecure: bool = False,
    startup_timeout_s: float = 60.0,
) -> Path:
    """Start a SuperLink on ``host:port``, submit the lungct Flower App, stream its logs until the run
    ends, stop the SuperLink. Returns the run folder (written by the ServerApp)."""
    out = Path(out).resolve()
    args = _tls_args(tls, insecure, server=True)
    cfg = replace(cfg, data=str(resolve_data_dir(cfg.data).resolve()))  # the ServerApp runs elsewhere
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lungct-flower-") as tmp:
        home, app = Path(tmp) / "home", Path(tmp) / "app"
        home.mkdir()
        app.mkdir()
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        (app / "overrides.toml").write_text(_run_config(cfg, plan, out))
        _write_config(home, host, port, tls, insecure)
        link_log = out / "superlink.log"
        with open(link_log, "wb") as sink:
            link = subprocess.Popen(
                [_tool("flower-superlink"), *args, "--host", host, "--port", str(port),
                 "--disable-runtime-dependency-installation"],
                stdout=sink, stderr=subprocess.STDOUT, env=_env(home), cwd=tmp,
            )  # fmt: skip
            try:
                wait_for_port(host, port, startup_timeout_s, link)
                log.info("SuperLink listening on %s:%d; waiting for %d sites", host, port, plan.sites)
                rc = subprocess.call(
                    [_tool("flwr"), "run", str(app), CONNECTION, "--stream",
                     "--run-config", str(app / "overrides.toml")],
                    env=_env(home), cwd=tmp,
                )  # fmt: skip
            finally:
                _stop(link)
    if rc != 0 or not (out / "run.json").is_file():
        raise FederationError(f"the federated run did not finish (flwr run exit {rc}); see {link_log}")
    return out


def client_command(
    superlink: str,
    data: str | Path,
    site: int,
    *,
    tls: Tls | None = None,
    insecure: bool = False,
    runtime_port: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``flower-supernode`` command line for one site reading only ``data``."""
    data = Path(data).resolve()
    if not data.is_dir():
        raise ConfigError(f"site data folder not found: {data}")
    cmd = [
        _tool("flower-supernode"),
        *_tls_args(tls, insecure, server=False),
        "--superlink", superlink,
        "--node-config", f"data={json.dumps(str(data))} site={int(site)}",
    ]  # fmt: skip
    if runtime_port is not None:
        cmd += ["--port", str(runtime_port)]
    return [*cmd, *extra]


def run_client(superlink: str, data: str | Path, site: int, **kwargs) -> int:
    """Run a SuperNode for one site in the foreground (until it is stopped); returns its exit code."""
    cmd = client_command(superlink, data, site, **kwargs)
    log.info("site %d: SuperNode connecting to %s", site, superlink)
    proc = subprocess.Popen(cmd, env=_env())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        return 130
