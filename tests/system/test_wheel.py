"""The built wheel is the product: it carries sql/ and schemas/ and runs `flows demo` from any directory.

The wheel is built from a copy of exactly what the Dockerfile's build stage copies, installed
into a fresh venv (dependencies from the machine's site-packages, so nothing is downloaded but
the build backend), and run from an unrelated directory with no PYTHONPATH: if anything still
read the checkout, the import check or the migrations would find it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUILD_CONTEXT = ("pyproject.toml", "setup.py", "README.md", "pipeline", "sql", "schemas")


def test_dockerfile_builds_and_installs_the_wheel():
    """The context the test builds from is the one the Dockerfile copies; the image installs the wheel."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {p for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M) for p in line.split()}
    assert copied == set(BUILD_CONTEXT)
    assert "pip wheel --no-deps" in dockerfile and "pip install -e" not in dockerfile
    assert re.search(r"^COPY --from=build /dist/ /dist/$", dockerfile, re.M)
    assert "USER 10001:10001" in dockerfile and 'ENTRYPOINT ["flows"]' in dockerfile


@pytest.mark.slow
def test_wheel_runs_the_demo_from_another_directory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_CONTEXT:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        bundled = {n for n in zf.namelist() if n.startswith("pipeline/_contracts/")}
    expected = {f"pipeline/_contracts/{p.relative_to(ROOT)}" for d in ("sql", "schemas")
                for p in (ROOT / d).rglob("*") if p.is_file()}
    assert bundled == expected

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWS_") and k != "PYTHONPATH"}
    env.update(FLOWS_HOME=str(tmp_path / "home"), COLUMNS="200")

    where = subprocess.run(
        [str(python), "-c", "import pipeline; from pipeline.basics.resources import contract_dir;"
                            "print(pipeline.__file__); print(contract_dir('sql')); print(contract_dir('schemas'))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    site = venv.resolve()
    assert all(Path(p).resolve().is_relative_to(site) for p in where), where

    flows = [str(venv / "bin" / "flows")]
    first = subprocess.run(flows + ["migrate"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    migrations = sorted(p.name for p in (ROOT / "sql").glob("*.sql"))
    assert all(name in first.stdout for name in migrations), first.stdout
    again = subprocess.run(flows + ["migrate"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert "schema is up to date" in again.stdout
    tables = subprocess.run(flows + ["sql", "SELECT name FROM system.tables WHERE database = 'flows'",
                                     "--format", "csv"], cwd=elsewhere, env=env, capture_output=True, text=True,
                            check=True, timeout=120).stdout
    assert {"flows", "rejects", "ownership", "edges"} <= set(tables.split())

    demo = subprocess.run(flows + ["demo", "--records", "500", "--namespaces", "4"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=240)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert re.search(r"records 500 · rejected (\d+) · .* expected records 500, rejected \1\b", demo.stdout), demo.stdout
