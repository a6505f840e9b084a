# SPDX-License-Identifier: Apache-2.0
"""llama-server on loopback: started with a controlled environment (no inherited ELASTICKV_*), waited for until it
answers /health, driven through its own HTTP API (JSON endpoints, Prometheus text on /metrics), watched for its
resident memory, stopped; its raw log is kept.

The hook's per-slot counters appear in ``/slots`` (``"elastickv"`` of each slot) and ``/metrics``
(``llamacpp:elastickv_*{id_slot="N"}``), from the patched server (cuda_hook/tree/tools/server/server-elastickv.h).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from . import paths, tools


class ServerError(RuntimeError):
    """llama-server did not start, exited, or answered an error; the message carries the log's tail or the answer."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_METRIC = re.compile(r'^llamacpp:([A-Za-z0-9_]+)(?:\{([^}]*)\})?\s+(\S+)$')


def parse_metrics(text: str) -> dict:
    """Prometheus text from /metrics: ``{name: value}`` for unlabelled series (``llamacpp:`` dropped) and
    ``{name: {label value: value}}`` for series with one label (``id_slot``, ``position``)."""
    out: dict = {}
    for line in text.splitlines():
        m = _METRIC.match(line.strip())
        if not m:
            continue
        name, labels, value = m.groups()
        v = float(value)  # "NaN" reads as nan
        if labels:
            lv = labels.split("=", 1)[1].strip('"')
            out.setdefault(name, {})[lv] = v
        else:
            out[name] = v
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a live process in KiB, from /proc/<pid>/status (VmRSS, VmHWM)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class Server:
    """A llama-server process on 127.0.0.1. Use as a context manager::

        with Server(model, ["-c", "2048", "-np", "2", "--metrics"], {"ELASTICKV": "1"}, log) as srv:
            srv.post("/completion", {"prompt": "...", "n_predict": 8})

    ``args`` are the server's own arguments besides the model, host, port and threads. ``binary`` defaults to the
    CPU build of the patched tree (``EKV_BUILD_VARIANT`` chooses another)."""

    def __init__(self, model: Path, args: list[str], hook_env: dict[str, str] | None, log_path: Path,
                 threads: int = 2, ready_timeout: float = 120.0, binary: Path | None = None):
        self.binary = Path(binary) if binary else paths.binary("llama-server")
        if not self.binary.exists():
            raise ServerError(f"{paths.relative(self.binary)} is not built; run `make build` "
                              f"(or scripts/setup/build_llamacpp.sh llama-server)")
        self.port = free_port()
        self.cmd = [str(self.binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                    "-t", str(threads), *args]
        self.hook_env = dict(hook_env or {})
        self.log_path = Path(log_path)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None

    # -- lifecycle

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=paths.ROOT, env=tools.clean_env(self.hook_env),
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise ServerError(f"llama-server exited with {self.proc.returncode} before it was ready:\n"
                                  f"{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"llama-server was not ready within {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 20 s; returns the exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def rss_kib(self) -> tuple[int, int]:
        """(current, peak) resident set size of the server in KiB."""
        return rss_kib(self.proc.pid)

    # -- HTTP

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 600.0) -> tuple[int, object]:
        """One request on a fresh connection; returns (status, parsed JSON or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode("utf-8", errors="replace")
            ctype = resp.getheader("Content-Type", "")
            return resp.status, (json.loads(raw) if "json" in ctype and raw else raw)
        finally:
            conn.close()

    def _ok(self, method: str, path: str, body: dict | None = None, timeout: float = 600.0):
        status, out = self.request(method, path, body, timeout)
        if status != 200:
            raise ServerError(f"{method} {path} answered {status}: {str(out)[:500]}")
        return out

    def post(self, path: str, body: dict, timeout: float = 600.0):
        return self._ok("POST", path, body, timeout)

    def get(self, path: str, timeout: float = 600.0):
        return self._ok("GET", path, None, timeout)

    def metrics(self) -> dict:
        """/metrics (the server needs ``--metrics``), parsed by :func:`parse_metrics`."""
        return parse_metrics(self.get("/metrics"))

    def slots(self) -> list[dict]:
        return self.get("/slots")

    def slot_hook(self, id_slot: int) -> dict | None:
        """The hook's counters of one slot from /slots, or None when the hook is off."""
        return next(s for s in self.slots() if s["id"] == id_slot).get("elastickv")
