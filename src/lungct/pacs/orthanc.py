"""A throw-away local Orthanc (with its DICOMweb plugin) for tests, benchmarks and demonstrations.

:class:`LocalOrthanc` writes a JSON configuration into a temporary folder (storage there too), starts
``Orthanc`` on 127.0.0.1 at a free HTTP port with the DICOM network server disabled and remote access
refused, waits until the REST API answers and stops the process on exit. Nothing here is used when
lungct talks to a hospital's PACS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from lungct.pacs.client import PacsUnreachable

ORTHANC_BINARY = "Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")


def find_orthanc() -> str | None:
    """Path of the Orthanc binary (PATH, then /usr/sbin), or None when it is not installed."""
    found = shutil.which(ORTHANC_BINARY)
    if found:
        return found
    return "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None


def find_dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin library, or None."""
    for d in PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.is_file():
            return str(p)
    return None


def _die_with_parent() -> None:
    """In the child (Linux): SIGTERM when the thread that started Orthanc ends, so a killed test run
    leaves no Orthanc behind (start it from a thread that lives as long as it should). Does nothing
    elsewhere."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalOrthanc:
    """``with LocalOrthanc() as pacs: pacs.dicomweb_url`` - a private Orthanc on loopback.

    ``users``: {name: password} to turn HTTP basic authentication on (off by default);
    ``lua``: the text of a Lua script (e.g. a ``ReceivedInstanceFilter`` that refuses some instances).
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        users: dict[str, str] | None = None,
        lua: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        binary, plugin = find_orthanc(), find_dicomweb_plugin()
        if binary is None or plugin is None:
            raise PacsUnreachable(
                "Orthanc with its DICOMweb plugin is not installed (Debian: apt-get install orthanc "
                "orthanc-dicomweb)"
            )
        self.binary, self.plugin = binary, plugin
        self._own_folder = folder is None
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="lungct-orthanc-"))
        self.users, self.lua, self.start_timeout_s = users, lua, start_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Root of Orthanc's REST API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb services (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    def _config(self) -> dict[str, object]:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, object] = {
            "Name": "lungct-local",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "Plugins": [self.plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "SaveJobs": False,
            "HttpTimeout": 60,
            "StorageCompression": False,
        }
        if self.users:
            cfg["RegisteredUsers"] = dict(self.users)
        if self.lua:
            script = self.folder / "filter.lua"
            script.write_text(self.lua, encoding="utf-8")
            cfg["LuaScripts"] = [str(script)]
        return cfg

    def start(self) -> LocalOrthanc:
        """Start Orthanc and wait until its REST API answers (PacsUnreachable after the timeout)."""
        import requests

        self.port = free_port()
        cfg_path = self.folder / "orthanc.json"
        cfg_path.write_text(json.dumps(self._config(), indent=1), encoding="utf-8")
        log = (self.folder / "orthanc.log").open("wb")
        self._proc = subprocess.Popen(
            [self.binary, str(cfg_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            preexec_fn=_die_with_parent,
        )
        auth = next(iter(self.users.items())) if self.users else None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/system", auth=auth, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise PacsUnreachable(f"local Orthanc did not start; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after 10 s) and remove a temporary folder."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None
        if self._own_folder and os.environ.get("LUNGCT_KEEP_ORTHANC") is None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
