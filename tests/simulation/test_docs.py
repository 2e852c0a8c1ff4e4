"""The reference docs say what the code does: generated tables are in step with the schemas."""

from __future__ import annotations

from pathlib import Path

from simulation.config_docs import configuration_markdown
from tasks.config import load_toml
from tasks.manifest import manifest_markdown
from tasks.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == configuration_markdown(), (
        "regenerate with: spinefl config docs > docs/configuration.md")


def test_manifest_reference_is_current():
    assert manifest_markdown() in (ROOT / "docs" / "manifest.md").read_text(), (
        "update the table in docs/manifest.md from: spinefl manifest docs")


def test_every_shipped_config_is_valid():
    from simulation.config import load_simulation
    from simulation.phantoms.config import load_cohort_config

    for path in sorted((ROOT / "configs").glob("*.toml")):
        sections = load_toml(path)
        if "federation" in sections:
            load_simulation(path)
        elif "task" in sections:
            load_run_config(path)
        else:
            load_cohort_config(path)
