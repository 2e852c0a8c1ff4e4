"""Benchmark: what patient-level DP-SGD costs per step against a plain step on the same samples.

Times one optimiser step (forward, backward, update) of a config's network
(default: the DP recipe, configs/segmentation_dp.toml) on B x m slices: without
DP (one batch of B x m slices), and with Opacus DP-SGD on B patients of m
slices each (their gradients averaged per patient, then clipped, summed and
noised; m = privacy.slices_per_patient x privacy.augmentations), in each way of
computing per-sample gradients (hooks, functorch/vmap, expanded weights), in
the default memory layout and in channels-last, side by side in one process,
and prints the ratios to the plain step. A way that fails says why.
``--per-patient 1`` times one slice per patient (the step before grouping).

    .venv/bin/python benchmarks/dp_overhead.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.privacy import PrivateRound  # noqa: E402
from client.trainer import LocalTrainer  # noqa: E402
from tasks.device import precision_for, select_device  # noqa: E402
from tasks.run_config import GRAD_SAMPLE_MODES, load_run_config, task_from_config  # noqa: E402
from tasks.stops import handle_stops  # noqa: E402


class Slices(torch.utils.data.Dataset):
    """Random slices of the network's input size (timing does not depend on content), one
    item per patient of ``per_patient`` stacked slices, or one per slice (``per_patient`` 0)."""

    def __init__(self, count: int, size: int, classes: int, per_patient: int) -> None:
        generator = torch.Generator().manual_seed(0)
        shape = (count, per_patient) if per_patient else (count,)
        self.images = torch.randn(*shape, 1, size, size, generator=generator)
        self.labels = torch.randint(0, classes, (*shape, 1, size, size), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


MODES = ("hooks", "functorch", "ew")


def seconds_per_step(task, loader, device, steps: int, mode: str | None,
                     channels_last: bool = False, per_patient: int = 1) -> float:
    """Median seconds of one training step, after two warm-up steps."""
    torch.manual_seed(0)
    model = task.build_model().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainer = LocalTrainer(task, model, {"lr": 1e-3, "schedule": "constant", "weight_decay": 0.0},
                           device, run_epochs=1)
    times: list[float] = []

    def run(private_model, batches, private_optimizer) -> None:
        done = 0
        while done < steps + 2:
            for batch in batches:
                if channels_last:
                    batch = {**batch, "image": batch["image"].contiguous(
                        memory_format=torch.channels_last)}
                start = time.perf_counter()
                trainer.steps(private_model, private_optimizer, [batch], None, None, group,
                              precision=precision_for(device, private=mode is not None))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if done >= 2:
                    times.append(time.perf_counter() - start)
                done += 1
                if done >= steps + 2:
                    return

    group = None
    if mode is None:
        run(model, loader, trainer.optimizer)
    else:
        with PrivateRound(model, trainer.optimizer, loader, 1.0, 1.0, mode,
                          per_patient=per_patient) as private:
            group = private.group_gradients
            run(private.model, private.batches, private.optimizer)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path,
                        default=ROOT / "configs" / "segmentation_dp.toml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--patients", type=int, default=16, help="patients per DP step")
    parser.add_argument("--per-patient", type=int, default=0,
                        help="slices per patient (default: the config's slices x augmentations)")
    args = parser.parse_args()
    handle_stops()  # SIGTERM and SIGHUP too: every process it started is stopped
    config = load_run_config(args.config)
    task = task_from_config(config)
    settings = task.settings
    privacy = config["privacy"]
    per_patient = args.per_patient or privacy["slices_per_patient"] * privacy["augmentations"]
    device = select_device(config["train"]["device"])
    batch, size = args.patients, settings["patch_size"][0]
    # As many patients as 4 steps' worth: Poisson batches average `batch` patients.
    patients = torch.utils.data.DataLoader(
        Slices(4 * batch, size, task.table.count, per_patient), batch_size=batch)
    slices = torch.utils.data.DataLoader(
        Slices(4 * batch * per_patient, size, task.table.count, 0),
        batch_size=batch * per_patient)
    plain = seconds_per_step(task, slices, device, args.steps, None)
    table = Table(title=f"One step of {task.name} ({settings['network']}, {size}x{size}, "
                        f"{batch} patients x {per_patient} slices) on {device}")
    for column in ("training", "seconds per step", "vs plain"):
        table.add_column(column)
    table.add_row("plain (no DP)", f"{plain:.3f}", "1.00")
    for layout in (False, True):
        rows = [(None, "plain")] * layout + [(m, f"DP-SGD by {m}") for m in MODES]
        for mode, name in rows:
            label = f"{name}{', channels-last' if layout else ''}"
            supported = "" if mode is None or mode in GRAD_SAMPLE_MODES else " (not offered)"
            try:
                seconds = seconds_per_step(task, slices if mode is None else patients, device,
                                           args.steps, mode, layout, per_patient)
            except Exception as e:  # a way Opacus cannot take for this network
                table.add_row(label + supported, "fails", str(e).splitlines()[0][:60])
                continue
            table.add_row(label + supported, f"{seconds:.3f}", f"{seconds / plain:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
