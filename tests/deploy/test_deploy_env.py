""".env.example and the configuration table document every Settings field, and nothing else."""

from __future__ import annotations

from types import ModuleType

import pytest
from dockerfile_checks import ROOT, SERVICE_VARS, check_env_example, parse_env_example
from script_loader import load_script

from core.settings import Settings

SETTINGS_ENV = {str(f.validation_alias) for f in Settings.model_fields.values()}


def test_every_setting_has_one_environment_name_and_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert isinstance(field.validation_alias, str), name
        assert field.description, name


def test_env_example_documents_every_setting() -> None:
    entries = parse_env_example((ROOT / ".env.example").read_text(encoding="utf-8"))
    assert check_env_example(entries, SETTINGS_ENV) == []
    assert set(entries) == SETTINGS_ENV | SERVICE_VARS


def test_env_example_entries_are_commented_out_defaults() -> None:
    # Compose passes .env to the containers: an uncommented value would silently override the image.
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    live = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert live == []


def _config_table() -> ModuleType:
    return load_script("scripts/config_table.py")


def test_generator_covers_the_same_variables() -> None:
    table = _config_table()
    assert set(parse_env_example(table.env_example())) == SETTINGS_ENV | SERVICE_VARS
    assert set(table.SERVICE_VARS) == SERVICE_VARS
    rows = table.markdown_table().splitlines()[2:]
    assert len(rows) == len(SETTINGS_ENV | SERVICE_VARS)


def test_deploy_doc_table_lists_every_variable() -> None:
    doc = (ROOT / "docs/deploy.md").read_text(encoding="utf-8")
    missing = [name for name in sorted(SETTINGS_ENV | SERVICE_VARS) if f"| `{name}` |" not in doc]
    assert missing == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# Port.\n# RECDISTILL_PORT=8000\n", ".env.example: setting RECDISTILL_HOST is not documented"),
        ("# Typo.\n# RECDISTILL_PROT=8000\n", "RECDISTILL_PROT is neither a Settings field"),
        ("\n# RECDISTILL_PORT=8000\n", "RECDISTILL_PORT has no comment line above it"),
        ("# A.\n# RECDISTILL_HOST=a\nRECDISTILL_PORT=1\n", "RECDISTILL_PORT has no comment line above it"),
    ],
)
def test_broken_env_examples_are_caught(text: str, expected: str) -> None:
    problems = check_env_example(parse_env_example(text), SETTINGS_ENV)
    assert any(expected in p for p in problems), problems


def test_duplicate_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="RECDISTILL_PORT appears twice"):
        parse_env_example("# a\n# RECDISTILL_PORT=1\n# b\nRECDISTILL_PORT=2\n")


def test_inject_replaces_only_the_marked_block() -> None:
    table = _config_table()
    doc = "# Title\n<!-- config-table -->\nold\n<!-- /config-table -->\ntail\n"
    once = table.inject(doc, "| new |\n")
    assert once == "# Title\n<!-- config-table -->\n| new |\n<!-- /config-table -->\ntail\n"
    assert table.inject(once, "| new |\n") == once
    with pytest.raises(ValueError, match="no <!-- config-table -->"):
        table.inject("# no markers\n", "| x |\n")
