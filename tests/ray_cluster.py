"""One local Ray head per test session, bound to 127.0.0.1 (the job API included)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CLUSTER_MARKER = "LIFT_RAY_TEST_RAY_CLUSTER"  # in the environment of every process of one LocalRay


def make_auth_env(directory: str) -> dict[str, str]:
    """Token auth with a fresh token of our own, written to ``directory``: the same behaviour whether or
    not ~/.ray/auth_token exists (a local `ray.init()` writes one), and clients must really present it."""
    token_path = Path(directory) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRay:
    """``ray start --head`` in a private temp dir; ``stop()`` takes it down with everything it started."""

    def __init__(self, num_cpus: int = 4, auth_env: dict[str, str] | None = None):
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # A short path: Ray's unix sockets must fit in 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="lrray-", dir="/tmp")
        self.auth_env = auth_env or make_auth_env(self.temp_dir)
        self.token = Path(self.auth_env["RAY_AUTH_TOKEN_PATH"]).read_text()
        self.env = {
            **os.environ,
            **self.auth_env,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            CLUSTER_MARKER: self.temp_dir,
            # Workers import torch; more than one thread per worker only oversubscribes the 2 CI cores.
            "OMP_NUM_THREADS": "1",
            # Serve's controller kills an HTTP proxy not ready within 5 s, three times over; on two busy
            # cores (a training run beside the tests) the proxy's imports alone take longer.
            "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": os.environ.get("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60"),
        }
        cmd = [
            str(BIN / "ray"), "start", "--head", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--port", str(self.port),
            "--num-cpus", str(num_cpus), "--num-gpus", "0",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--temp-dir", self.temp_dir,
        ]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        try:
            if out.returncode != 0:
                raise RuntimeError(f"ray start failed:\n{out.stdout}\n{out.stderr}")
            self._wait_for_job_api()
        except BaseException:
            self.stop()
            raise

    def _wait_for_job_api(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while True:
            try:
                request = urllib.request.Request(f"{self.dashboard}/api/version", headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(request, timeout=2).read()
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def job_env(self, **extra: str) -> dict[str, str]:
        return {**self.env, "RAY_API_SERVER_ADDRESS": self.dashboard, "RAY_ADDRESS": self.dashboard, **extra}

    def processes(self) -> list:
        """Every live process of this cluster: each inherits the marker from ``ray start``'s environment
        (workers rename themselves ``ray::...``, so their command lines cannot be matched)."""
        import psutil

        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(CLUSTER_MARKER) == self.temp_dir:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def stop(self) -> None:
        """Take this cluster down, and only this one: ``ray stop`` would also kill any other Ray
        cluster on the machine (a user's own, or a benchmark's running beside the tests)."""
        import psutil

        for _ in range(3):  # a raylet may start a worker while its siblings are going down
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
            _, alive = psutil.wait_procs(procs, timeout=5)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(alive, timeout=15)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
