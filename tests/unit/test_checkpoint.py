"""Checkpoint files: atomic saves, clear errors for corrupt, foreign, unwritable and locked files."""

from __future__ import annotations

import os

import pytest

from pipeline.sources.checkpoint import Checkpoint, CheckpointError


def test_round_trip_and_missing(tmp_path):
    cp = Checkpoint(tmp_path / "a" / "cp.json", "loki")
    assert cp.load() is None
    cp.save({"position": 5})
    assert Checkpoint(tmp_path / "a" / "cp.json", "loki").load() == {"position": 5}
    assert oct((tmp_path / "a" / "cp.json").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("content,message", [
    ("{trunc", "corrupt"),
    ("", "corrupt"),
    ('{"version": 1, "kind": "journal", "state": {}}', "not a version 1 loki checkpoint"),
    ('{"version": 9, "kind": "loki", "state": {}}', "not a version 1 loki checkpoint"),
    ('{"version": 1, "kind": "loki", "state": 3}', "no state"),
    ("[1, 2]", "not a version 1"),
])
def test_unusable_checkpoints_say_why(tmp_path, content, message):
    path = tmp_path / "cp.json"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(path, "loki").load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    with pytest.raises(CheckpointError, match="cannot write"):
        Checkpoint(d / "cp.json", "loki").save({})


def test_unwritable_directory_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot"):
        Checkpoint(tmp_path / "file" / "cp.json", "loki").save({})
    with pytest.raises(CheckpointError, match="cannot create checkpoint lock"):
        Checkpoint(tmp_path / "file" / "cp.json", "loki").lock()


def test_second_shipper_is_refused(tmp_path):
    with Checkpoint(tmp_path / "cp.json", "loki"), pytest.raises(CheckpointError, match="in use"):
        Checkpoint(tmp_path / "cp.json", "loki").lock()
    with Checkpoint(tmp_path / "cp.json", "loki"):
        pass  # released on exit
