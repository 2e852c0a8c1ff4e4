"""The simulate report: results table, cross-site matrix, plots and a short markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from tasks.files import write_table, write_text
from tasks.plots import save_figure
from tasks.registry import task_class
from tasks.tables import markdown_table

MODELS = ("federated", "personal", "local", "pooled")
BASELINES = ("local", "pooled")


def comparison(results: pd.DataFrame, score: str) -> pd.DataFrame:
    """Hospital x model table of the score on each hospital's test patients (its own
    personal and local-only models), with ratios, and where hospitals kept personal models
    how far each is above the better of its local-only and the pooled model."""
    table = results.pivot_table(index="hospital", columns="model", values=score)
    table = table[[m for m in MODELS if m in table.columns]]
    if "pooled" in table:
        table["federated / pooled"] = table["federated"] / table["pooled"]
    if "local" in table:
        table["federated / local"] = table["federated"] / table["local"]
    baselines = [m for m in BASELINES if m in table]
    if "personal" in table and baselines:
        table["personal - best baseline"] = table["personal"] - table[baselines].max(axis=1)
    return table


def cross_site(cross: pd.DataFrame, score: str) -> pd.DataFrame:
    """Every model (rows: ``federated``, ``pooled``, ``personal: <hospital>``, ``local:
    <hospital>``) on every hospital's test patients (columns): the score."""
    named = cross.assign(trained=[kind if owner == "all" else f"{kind}: {owner}"
                                  for kind, owner in zip(cross.model, cross.owner, strict=True)])
    table = named.pivot_table(index="trained", columns="hospital", values=score)
    order = sorted(table.index, key=lambda row: (MODELS.index(row.split(":")[0]), row))
    return table.loc[order]


def plot_cross_site(table: pd.DataFrame, score: str, path: Path) -> Path:
    """The cross-site matrix as a heat map, each cell's score written in it."""
    figure, axis = plt.subplots(figsize=(1.6 * len(table.columns) + 3, 0.5 * len(table) + 1.5))
    values = table.to_numpy(dtype=float)
    low, high = min(0.0, np.nanmin(values)), max(1.0, np.nanmax(values))  # kappa: [-1, 1]
    image = axis.imshow(values, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    axis.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
    axis.set_yticks(range(len(table.index)), [str(i) for i in table.index])
    for (row, column), value in np.ndenumerate(values):
        if np.isfinite(value):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center",
                      color="white" if value < low + 0.6 * (high - low) else "black")
    axis.set(xlabel="test patients of", title=f"Test {score}: every model, every hospital")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return save_figure(figure, path)


def write_report(results: pd.DataFrame, round_metrics: Path, hospitals: pd.DataFrame,
                 config: dict[str, Any], folder: Path, cross: pd.DataFrame | None = None,
                 steps: dict[str, int] | None = None) -> Path:
    """Write results.csv, comparison.csv, <score>_per_round.png (the task's score),
    comparison.png, with ``cross`` (every model on every hospital: ``model``, ``owner``,
    ``hospital``, metrics) cross_site.csv and cross_site.png, and summary.md (markdown that
    shows the plots beside its tables, and ``steps``: the optimiser steps of each kind of
    training)."""
    folder.mkdir(parents=True, exist_ok=True)
    score = task_class(config["task"]["name"]).score
    write_table(results, folder / "results.csv")
    table = comparison(results, score)
    write_table(table.reset_index(), folder / "comparison.csv")
    cross_lines: list[str] = []
    if cross is not None and len(cross):
        write_table(cross, folder / "cross_site.csv")
        matrix = cross_site(cross, score)
        write_table(matrix.reset_index(), folder / "cross_site_matrix.csv")
        plot_cross_site(matrix, score, folder / "cross_site.png")
        cross_lines = [f"## Every model on every hospital's test patients ({score})", "",
                       markdown_table(matrix), "",
                       "![Every model on every hospital's test patients](cross_site.png)", ""]

    rounds = pd.read_csv(round_metrics)
    figure, axis = plt.subplots(figsize=(7, 4))
    column = f"val_{score}"
    if column in rounds:
        for hospital, group in rounds.groupby("hospital"):
            axis.plot(group["round"], group[column], marker="o", label=str(hospital))
    axis.set(xlabel="round", ylabel=f"validation {score}", title="Federated training",
             ylim=(0, 1))
    axis.legend()
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    per_round = f"{score}_per_round.png"
    save_figure(figure, folder / per_round)

    figure, axis = plt.subplots(figsize=(7, 4))
    table[[m for m in MODELS if m in table]].plot.bar(ax=axis, rot=0)
    axis.legend(title="model", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.set(ylabel=f"test {score}", ylim=(0, 1), title="Each hospital's test patients")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    save_figure(figure, folder / "comparison.png")

    privacy_lines = privacy_statement(rounds, config, folder)
    federation = config["federation"]
    lines = [
        "# spinefl simulate report", "",
        f"Task `{config['task']['name']}`, strategy `{federation['strategy']}`"
        + (f", personalisation `{federation['personalisation']}`"
           if federation["personalisation"] != "none" else "") + ", "
        f"{federation['rounds']} rounds of {federation['local_epochs']} local epoch(s)"
        + (f" (at most {federation['local_steps']} steps)" if federation["local_steps"] else "")
        + f"; partition `{config['partition']['method']}`.", "",
        "## Hospitals", "", markdown_table(hospitals), "",
        f"## Test {score} per hospital", "", markdown_table(table), "",
        "![Each hospital's test patients, every model](comparison.png)", "",
        *cross_lines,
        *([f"Training compute, optimiser steps of {config['train']['batch_size']} samples "
           "summed over hospitals and rounds or epochs: "
           + "; ".join(f"{kind} {count}" for kind, count in steps.items()) + ".", ""]
          if steps else []),
        f"![Validation {score} per round at each hospital]({per_round})", "",
        *privacy_lines,
        "Per-image metrics of every model: `results.csv`; per-hospital metrics of every "
        "round: `../federated/federated_metrics.csv`.", "",
    ]
    write_text(folder / "summary.md", "\n".join(lines))
    return folder / "summary.md"


def privacy_statement(rounds: pd.DataFrame, config: dict[str, Any], folder: Path) -> list[str]:
    """The guarantees of the run in words (and ``epsilon_per_round.png``); [] without DP."""
    lines: list[str] = []
    if "train_epsilon" in rounds:
        figure, axis = plt.subplots(figsize=(7, 4))
        for hospital, group in rounds.dropna(subset=["train_epsilon"]).groupby("hospital"):
            axis.plot(group["round"], group["train_epsilon"], marker="o", label=str(hospital))
        axis.set(xlabel="round", ylabel="epsilon per patient (this run)",
                 title="Privacy spent at each hospital")
        axis.legend()
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.tight_layout()
        save_figure(figure, folder / "epsilon_per_round.png")
        privacy = config["privacy"]
        trained = ("every parameter" if privacy["trainable"] == "all"
                   else f"the {privacy['trainable']} only, the rest frozen")
        lines += ["## Privacy", "",
                  f"Patient-level DP-SGD at every hospital: each sampled patient's "
                  f"{privacy['slices_per_patient']} slice(s) x {privacy['augmentations']} "
                  f"augmentation(s) averaged into one gradient clipped to "
                  f"{privacy['max_grad_norm']:g} (one clipped gradient per patient per step), "
                  f"training {trained}; {privacy['accountant'].upper()} accountant, "
                  "add/remove one patient:", ""]
        for hospital, group in rounds.dropna(subset=["train_epsilon"]).groupby("hospital"):
            last = group.sort_values("round").iloc[-1]
            lines.append(f"- ({last['train_epsilon']:.2f}, {last['train_delta']:g}) per patient "
                         f"at hospital {hospital} after {len(group)} round(s) of this run "
                         f"({last['train_epsilon-total']:.2f} over every run in its ledger).")
        lines += ["", "![Epsilon spent per round at each hospital](epsilon_per_round.png)"]
    if "train_error" in rounds:
        refused = rounds[rounds["train_error"].fillna("").str.contains("privacy budget")]
        for _, row in refused.iterrows():
            lines.append(f"- Round {int(row['round'])}: hospital {row['hospital']} refused to "
                         "train: its privacy budget would have been exceeded.")
    if "central_epsilon" in rounds:
        federation = config["federation"]
        spent = float(rounds["central_epsilon"].max())
        lines += ["", f"Central DP at the server: ({spent:.2f}, {federation['central_delta']:g}) "
                  f"per hospital after {int(rounds['round'].max())} rounds (noise multiplier "
                  f"{federation['central_noise_multiplier']:g}, clipping norm "
                  f"{federation['central_clipping_norm']:g}, every hospital every round)."]
    return [*lines, ""] if lines else []
