"""``docs/configuration.md``, rendered from the settings classes themselves.

Each setting is defined once, as a pydantic field (type, default, bounds, description); this
module only renders those definitions as tables, one per settings class with its prefix, so
the page cannot drift from the code. ``python -m pipeline.tooling.settings_doc`` rewrites the
page; tests/unit/test_settings_doc.py checks the committed page is exactly this output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from pipeline.analysis.evidence import AnalysisSettings
from pipeline.analysis.policy import PolicySettings
from pipeline.basics.config import Settings
from pipeline.sources.loki.client import LokiAuth

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"  # a generator run from a checkout

SECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("Pipeline", Settings),
    ("Rollout tiers", AnalysisSettings),
    ("Generated policies", PolicySettings),
    ("Loki credentials", LokiAuth),
)

INTRO = """\
# Configuration

Every setting is an environment variable. Unset variables take the default, and nothing needs
to be set to run everything on one machine. Secrets can also come from a file: set the
`…_FILE` variable to the file's path. Secret values are never logged or shown by `flows status`.

The settings are one tree under the `FLOWS_` prefix: the pipeline's sections, read by every
process, and three more read only by the commands that need them (rollout tiers, generated
policies, Loki credentials), each with its own sub-prefix. These tables are generated from those
definitions by `python -m pipeline.tooling.settings_doc`, so edit the field's `description=` in
the code, not this page.
"""

OUTRO = """\
## Command-line options that read the environment

`flows ship loki --url` reads `FLOWS_LOKI_URL`, `--org-id` reads `FLOWS_LOKI_ORG_ID`, and `--host-label`
reads `FLOWS_LOKI_HOST_LABELS` (space-separated stream labels naming the node, first present wins).
`--asn-db` of `flows report drift`, `allowlist`, `html` and `flows policy` reads `FLOWS_ASN_DB`: an
IP-to-ASN `.mmdb` file (MaxMind GeoLite2-ASN, IPinfo) naming each external IP's provider and
announced prefix, unset by default.
"""


def env_name(settings: type[BaseSettings], field: str) -> str:
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()


def _type(annotation: Any) -> str:
    """What a value looks like, in words a user types."""
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args and get_origin(annotation) is not dict:  # X | None
        return _type(args[0])
    names = {bool: "true or false", int: "integer", float: "number", str: "text", Path: "path", SecretStr: "secret",
             dict: "JSON object"}
    return names.get(get_origin(annotation) or annotation, str(annotation))


_BOUNDS = {annotated_types.Ge: ("≥", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("≤", "le"),
           annotated_types.Lt: ("<", "lt"), annotated_types.MinLen: ("length ≥", "min_length"),
           annotated_types.MaxLen: ("length ≤", "max_length")}


def _bounds(info: FieldInfo) -> str:
    return ", ".join(f"{word} {getattr(m, attr)}" for m in info.metadata for kind, (word, attr) in _BOUNDS.items()
                     if isinstance(m, kind))


def _default(info: FieldInfo) -> str:
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is None:
        return "unset"
    if isinstance(value, Path):
        home = Path.home()
        value = f"~/{value.relative_to(home)}" if value.is_relative_to(home) else str(value)
    elif isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, dict):
        value = json.dumps(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(settings: type[BaseSettings], fields: dict[str, FieldInfo]) -> str:
    rows = ["| Variable | Default | Values | Meaning |", "|---|---|---|---|"]
    for name, info in fields.items():
        values = ", ".join(filter(None, (_type(info.annotation), _bounds(info))))
        rows.append(f"| `{env_name(settings, name)}` | {_cell(_default(info))} | {_cell(values)} | "
                    f"{_cell(info.description or '')} |")
    return "\n".join(rows) + "\n"


def _prose(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def section(title: str, settings: type[BaseSettings]) -> str:
    """One class of the tree; a class made of sections (``Settings``) gets a table per section."""
    head = f"## {title} (`{settings.model_config.get('env_prefix', '')}*`)\n\n{_prose(settings)}\n\n"
    parts = [b for b in settings.__bases__ if issubclass(b, BaseModel) and b is not BaseSettings]
    if not parts:
        return head + _table(settings, settings.model_fields)
    return head + "\n".join(f"### {part.__name__.removesuffix('Section')}\n\n{_prose(part)}\n\n"
                             + _table(settings, part.model_fields) for part in parts)


def render() -> str:
    return "\n".join([INTRO, *(section(t, s) for t, s in SECTIONS), OUTRO])


def main() -> None:
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render(), encoding="utf-8")
    print(PAGE.relative_to(PAGE.parents[1]), file=sys.stderr)


if __name__ == "__main__":
    main()
