"""Train a task the way `spinefl train` does, from a run config written on the spot."""

from __future__ import annotations


def train_for(manifest, folder, task_lines: str, train_lines: str):
    """Train a task on ``manifest`` with ``spinefl train``'s code path; returns the run result."""
    from client.training import train
    from tasks.run_config import load_run_config

    run_config = folder / "run.toml"
    run_config.write_text(f"""
[data]
manifest = "{manifest.root / 'manifest.csv'}"
[task]
{task_lines}
[train]
{train_lines}
[output]
dir = "{folder / 'run'}"
""")
    return train(load_run_config(run_config))
