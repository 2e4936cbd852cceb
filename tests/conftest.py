"""Shared fixtures: a real `flows up` process (embedded broker + worker + chDB) per test module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.transport.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent


def flows_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_")}
    env.update({"FLOWS_HOME": str(home), "FLOWS_EMBEDDED_KAFKA_PORT": str(port), "FLOWS_BATCH_MAX_S": "0.3",
                "COLUMNS": "200", **extra})
    return env


def flows(env: dict[str, str], *args: str, input: bytes | None = None, timeout: float = 300,
          check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI as a real process, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, input=input, capture_output=True,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"flows {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}")
    return proc


class Stack:
    """A running `flows up` in its own process group."""

    def __init__(self, home: Path, command: str = "up", **extra_env: str) -> None:
        self.home = home
        self.port = free_port()
        self.command = command
        self.env = flows_env(home, self.port, **extra_env)
        self.log = home / f"{command}.log"
        self.proc: subprocess.Popen | None = None

    def launch(self) -> Stack:
        """Start the process and return at once, as `flows up &` does."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", self.command], env=self.env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def start(self, timeout: float = 60) -> Stack:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise AssertionError(f"flows {self.command} exited {self.proc.returncode}:\n{tail}")
            if flows(self.env, "status", check=False, timeout=30).returncode == 0:
                return self
            time.sleep(0.3)
        raise AssertionError(f"flows up not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return flows(self.env, *args, **kw)

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--format", "json").stdout)

    def status(self) -> dict:
        return json.loads(self.run("status", "--json").stdout)

    def wait_for(self, predicate, timeout: float = 120, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; status: {self.status()}")

    def wait_for_claims(self, claims: int) -> None:
        self.wait_for(lambda: self.status()["registry"]["claims"] >= claims, what=f"{claims} ownership claims")

    def wait_for_stored(self, records: int, rejected: int) -> dict:
        def done() -> bool:
            s = self.json("report", "summary")
            return s["records"] >= records and s["rejected"] >= rejected

        self.wait_for(done, what=f"{records} records and {rejected} rejects")
        return self.json("report", "summary")

    def kill(self) -> None:
        """SIGKILL, as a node failure or the OOM killer would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM and wait; returns how long the stop took."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return time.monotonic() - started


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own (a worker killed or a store closed takes nothing else with it)."""
    b = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    asyncio.run(b.start())
    yield b
    b.stop()


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator:
    stacks: list[Stack] = []

    def make(name: str = "home", command: str = "up", **env: str) -> Stack:
        s = Stack(tmp_path / name, command, **env)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.stop()
        if s.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(s.proc.pid, signal.SIGKILL)
