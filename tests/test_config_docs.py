"""docs/configuration.md is generated from the settings models and kept fresh."""

from __future__ import annotations

import types
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from aivtuber_common.config import Settings
from tests.support import load_script

ROOT = Path(__file__).resolve().parent.parent


def _config_docs() -> ModuleType:
    return load_script("config_docs")


def test_docs_configuration_md_is_what_the_models_generate() -> None:
    generated = _config_docs().render()
    current = (ROOT / "docs" / "configuration.md").read_text("utf-8")
    assert current == generated, (
        "docs/configuration.md is stale: run .venv/bin/python scripts/config_docs.py"
    )


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _leaf_keys(annotation, f"{prefix}{name}.")
        elif isinstance(annotation, types.UnionType) and all(
            isinstance(arg, type) and issubclass(arg, BaseModel) for arg in args
        ):  # one of several sections (bus: direct or redis): each one's keys
            keys.append(f"{prefix}{name}")
            for member in args:
                keys += _leaf_keys(member, f"{prefix}{name}.")
        elif get_origin(annotation) is dict and _members(args[-1]):
            keys.append(f"{prefix}{name}")  # a map of sections of several shapes (voices)
            for member in _members(args[-1]):
                keys += _leaf_keys(member, f"{prefix}{name}.<name>.")
        elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            keys.append(f"{prefix}{name}")
            keys += _leaf_keys(args[-1], f"{prefix}{name}.<name>.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _members(annotation: Any) -> list[type[BaseModel]]:
    """The models of an ``Annotated`` union of (``Annotated``) models; [] for anything else."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    members = []
    for member in get_args(annotation) if get_origin(annotation) is Union else ():
        while get_origin(member) is Annotated:
            member = get_args(member)[0]
        if isinstance(member, type) and issubclass(member, BaseModel):
            members.append(member)
    return members


def test_every_key_has_a_row_that_says_what_it_is_for() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[4].strip()
        for line in _config_docs().render().splitlines()
        if line.startswith("| `")
    }
    keys = _leaf_keys(Settings)
    assert "gateway.fast_path" in keys and "tts_worker.voices.<name>.engine" in keys
    assert "tts_worker.voices.<name>.url" in keys and "tts_worker.voices.<name>.server" in keys
    assert [key for key in keys if key not in rows] == []
    # A key without a comment (or a description) in config.py has an empty meaning.
    assert [key for key in keys if not rows[key]] == []


def test_a_default_computed_at_start_is_described_not_this_machines_value() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[3].strip()
        for line in _config_docs().render().splitlines()
        if line.startswith("| `")
    }
    assert rows["tts_worker.max_concurrent"] == "one per core"
