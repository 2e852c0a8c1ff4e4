"""The simulate report: results table, plots and a short markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from tasks.files import write_table, write_text
from tasks.plots import save_figure
from tasks.registry import task_class
from tasks.tables import markdown_table

MODELS = ("federated", "local", "pooled")


def comparison(results: pd.DataFrame, score: str) -> pd.DataFrame:
    """Hospital x model table of the score on each hospital's test patients, with ratios."""
    table = results.pivot_table(index="hospital", columns="model", values=score)
    table = table[[m for m in MODELS if m in table.columns]]
    if "pooled" in table:
        table["federated / pooled"] = table["federated"] / table["pooled"]
    if "local" in table:
        table["federated / local"] = table["federated"] / table["local"]
    return table


def write_report(results: pd.DataFrame, round_metrics: Path, hospitals: pd.DataFrame,
                 config: dict[str, Any], folder: Path) -> Path:
    """Write results.csv, comparison.csv, <score>_per_round.png (the task's score),
    comparison.png and summary.md (markdown that shows the plots beside its tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    score = task_class(config["task"]["name"]).score
    write_table(results, folder / "results.csv")
    table = comparison(results, score)
    write_table(table.reset_index(), folder / "comparison.csv")

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
        f"Task `{config['task']['name']}`, strategy `{federation['strategy']}`, "
        f"{federation['rounds']} rounds of {federation['local_epochs']} local epoch(s)"
        + (f" (at most {federation['local_steps']} steps)" if federation["local_steps"] else "")
        + f"; partition `{config['partition']['method']}`.", "",
        "## Hospitals", "", markdown_table(hospitals), "",
        f"## Test {score} per hospital", "", markdown_table(table), "",
        "![Each hospital's test patients, every model](comparison.png)", "",
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
