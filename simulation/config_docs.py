"""The reference of every config key, rendered from the schemas (docs/configuration.md)."""

from __future__ import annotations

from server.config import FEDERATION_KEYS
from simulation.phantoms.config import SCANNER_SCHEMA
from simulation.phantoms.config import SCHEMA as COHORT_SCHEMA
from simulation.simulate import SIMULATION_KEYS
from tasks.config import schema_markdown
from tasks.registry import TASKS
from tasks.training import RUN_KEYS, TASK_NAME_KEY

HEADER = """# Configuration reference

Generated from the schemas in the code by `spinefl config docs`; a test keeps
this file and the code in step. Every key is validated when a config is
loaded: an unknown key, a wrong type or a value out of range is refused with
the file and the key named.

"""


def configuration_markdown() -> str:
    """Markdown tables of the run, task, federated experiment and phantom cohort configs."""
    parts = [HEADER,
             schema_markdown("Run config (`spinefl train --config`)",
                             {**RUN_KEYS, "task": (TASK_NAME_KEY,)})]
    for name, cls in sorted(TASKS.items()):
        parts.append(schema_markdown(f"Task `{name}` (`[task]` with `name = \"{name}\"`)",
                                     {"task": cls.keys}))
    parts.append(schema_markdown(
        "Federated experiment (`spinefl simulate --config`; the run config's sections plus these)",
        {"federation": FEDERATION_KEYS, **SIMULATION_KEYS}))
    parts.append(schema_markdown("Phantom cohort (`spinefl phantoms --config`)", COHORT_SCHEMA))
    parts.append(schema_markdown("Phantom scanners (`[[scanner]]`, one per virtual site)",
                                 SCANNER_SCHEMA))
    return "\n".join(parts)
