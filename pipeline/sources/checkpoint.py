"""Shipper checkpoints: how far shipping is acknowledged by Kafka, saved atomically.

A shipper saves a checkpoint only after the broker acknowledged everything
before it, so a restart resumes without loss (at worst it re-sends records the
worker then drops as replays). The file is locked while a shipper runs, so two
shippers cannot advance the same checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, written or locked; the message says which and where."""


class Checkpoint:
    """A small JSON document at ``path`` with a ``kind`` guard against mixing shippers."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self._lock_fd: int | None = None

    def __enter__(self) -> Checkpoint:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def lock(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint lock next to {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(f"checkpoint {self.path} is in use by another shipper") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> dict[str, Any] | None:
        """The saved state, None when there is none; CheckpointError when it is unusable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except ValueError:
            raise CheckpointError(
                f"checkpoint {self.path} is corrupt (not JSON); move it away to start over, "
                "or pass --since to choose where to start") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION or doc.get("kind") != self.kind:
            raise CheckpointError(
                f"checkpoint {self.path} is not a version {FORMAT_VERSION} {self.kind} checkpoint")
        state = doc.get("state")
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {self.path} has no state object")
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write atomically (temp file, fsync, rename) so a crash leaves the old or the new state."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"version": FORMAT_VERSION, "kind": self.kind, "state": state})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror}") from None
