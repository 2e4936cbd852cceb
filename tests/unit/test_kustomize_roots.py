"""Every kustomization under deploy/ applies with plain `kubectl apply -k`, checked without kubectl.

Kustomize's default load restrictor reads a *file* only from inside the directory of the
kustomization that names it; another kustomization *directory* (an overlay's ``../../base``, a
component) may be anywhere, as it is a root of its own. tests/system/test_deploy.py renders the overlays
with kubectl's kustomize under that restrictor; this test states the rule itself, so it holds on a
machine without kubectl and names the offending reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
ROOT_LISTS = ("resources", "components")  # files or other kustomization roots
FILE_LISTS = ("crds", "configurations", "patchesStrategicMerge", "generators", "transformers", "validators")
GENERATORS = ("configMapGenerator", "secretGenerator")


def references(doc: dict) -> Iterator[tuple[str, str]]:
    """(field, path) for every local path a kustomization names."""
    for field in ROOT_LISTS + FILE_LISTS:
        for entry in doc.get(field) or []:
            if isinstance(entry, str) and "\n" not in entry:  # patchesStrategicMerge may inline a patch
                yield field, entry
    for field in ("patches", "patchesJson6902", "replacements"):
        for entry in doc.get(field) or []:
            if isinstance(entry, dict) and "path" in entry:
                yield field, entry["path"]
    for field in GENERATORS:
        for gen in doc.get(field) or []:
            for source in gen.get("files") or []:
                yield f"{field}.files", source.split("=", 1)[-1]
            for source in (gen.get("envs") or []) + ([gen["env"]] if gen.get("env") else []):
                yield f"{field}.envs", source


def problems(kustomization: Path) -> list[str]:
    """What `kubectl apply -k` would refuse to load under the default restrictor."""
    root = kustomization.parent
    found = []
    for field, ref in references(yaml.safe_load(kustomization.read_text())):
        target = (root / ref).resolve()
        if not target.exists():
            found.append(f"{field}: {ref} does not exist")
        elif target.is_dir():
            if field not in ROOT_LISTS or not (target / "kustomization.yaml").is_file():
                found.append(f"{field}: {ref} is a directory without a kustomization.yaml")
        elif not target.is_relative_to(root.resolve()):
            found.append(f"{field}: {ref} is outside {root.name}/ (needs LoadRestrictionsNone)")
    return found


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(DEPLOY)))
def test_files_stay_inside_their_kustomization(kustomization: Path) -> None:
    assert not problems(kustomization), "\n".join(problems(kustomization))


def test_the_rule_is_not_vacuous(tmp_path: Path) -> None:
    """Every kind of reference deploy/ uses is seen, and each way of breaking the rule is caught."""
    assert {"components/grafana", "components/loki-shipper", "overlays/dev", "overlays/production"} <= {
        str(k.parent.relative_to(DEPLOY)) for k in KUSTOMIZATIONS}
    base = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert {f for f, _ in references(base)} == {"resources", "configMapGenerator.files", "configMapGenerator.envs"}
    (tmp_path / "outside.json").write_text("{}")
    (tmp_path / "plain-dir").mkdir()
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../plain-dir"], "patches": [{"path": "missing.yaml"}],
        "configMapGenerator": [{"name": "x", "files": ["dash.json=../outside.json"]}]}))
    assert problems(tmp_path / "k" / "kustomization.yaml") == [
        "resources: ../plain-dir is a directory without a kustomization.yaml",
        "patches: missing.yaml does not exist",
        "configMapGenerator.files: ../outside.json is outside k/ (needs LoadRestrictionsNone)",
    ]
