"""The reference of every config key, rendered from the schemas (docs/configuration.md)."""

from __future__ import annotations

from server.config import FEDERATION_KEYS
from simulation.config import SIMULATION_KEYS
from simulation.phantoms.config import SCANNER_SCHEMA
from simulation.phantoms.config import SCHEMA as COHORT_SCHEMA
from tasks.config import schema_markdown
from tasks.registry import TASKS
from tasks.run_config import RUN_KEYS, TASK_NAME_KEY

HEADER = """# Configuration reference

Generated from the schemas in the code by `spinefl config docs`; a test keeps
this file and the code in step. Every key is validated when a config is
loaded: an unknown key, a wrong type or a value out of range is refused with
the file and the key named, and so are settings that do not go together,
before anything is written. A `path` key names something the run reads and is
relative to the folder of the config file that gives it (an option on the
command line, like `--manifest`, is relative to the working folder); output
folders (`output.dir`, `phantoms.dir`) are relative to the working folder.
In `[train]`, a federation sends the hospitals only `batch_size`, `lr`,
`schedule`, `weight_decay` and `seed`; the other keys are for runs on one
machine (a hospital's device is its own node config's `device`).

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
