"""docs/configuration.md is what the settings classes say, and says it about every variable."""

from __future__ import annotations

import pytest
import typer
from pydantic import ValidationError

from pipeline.cli.app import app
from pipeline.sources.loki.client import LokiAuth
from pipeline.tooling import settings_doc
from tests.unit.test_cli_tree import command_tree


def test_committed_page_is_the_generated_one() -> None:
    assert settings_doc.PAGE.read_text(encoding="utf-8") == settings_doc.render(), \
        "docs/configuration.md is stale: run python -m pipeline.tooling.settings_doc"


def test_every_setting_says_what_it_is_for() -> None:
    undocumented = [settings_doc.env_name(cls, name)
                    for _, cls in settings_doc.SECTIONS if cls is not LokiAuth  # explained by its docstring
                    for name, info in cls.model_fields.items() if not info.description]
    assert undocumented == [], "add description= to these fields"


def test_environment_read_by_command_options_is_on_the_page() -> None:
    page = settings_doc.render()
    envvars = {p["envvar"] for params in command_tree(typer.main.get_command(app)).values() for p in params
               if p["envvar"]}
    assert envvars and all(f"`{v}`" in page for v in envvars), sorted(envvars)


def test_documented_names_are_the_ones_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every numeric variable on the page is read by its class: a bad value there is refused."""
    numeric = [(cls, name) for _, cls in settings_doc.SECTIONS for name, info in cls.model_fields.items()
               if info.annotation in (int, float)]
    assert len(numeric) > 10
    for cls, name in numeric:
        with monkeypatch.context() as mp:
            mp.setenv(settings_doc.env_name(cls, name), "not a number")
            with pytest.raises(ValidationError) as info:
                cls()
            assert [e["loc"] for e in info.value.errors()] == [(name,)]


def test_every_pipeline_setting_lives_in_exactly_one_section() -> None:
    from pydantic import BaseModel
    from pydantic_settings import BaseSettings

    from pipeline.basics.config import Settings

    sections = [b for b in Settings.__bases__ if issubclass(b, BaseModel) and b is not BaseSettings]
    names = [name for part in sections for name in part.model_fields]
    assert len(sections) > 5 and sorted(names) == sorted(Settings.model_fields), \
        "define each Settings field in one section class, none on Settings itself"
