"""Strategies by name, built from the ``[federation]`` settings.

All but FedBN are Flower's own. FedBN is FedAvg whose messages ask the
hospitals to keep their normalisation layers local (clients do the keeping;
the global model still carries the average, for use outside the federation).
Central DP wraps FedAvg in Flower's server-side fixed-clipping DP wrapper,
with a uniform average (each hospital's weight is its ``uniform-weight``
metric, 1), so that one hospital moves the average by at most C / n.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from tasks.protocol import KEEP_LOCAL_NORM, UNIFORM_WEIGHT


class FedBN(FedAvg):
    """FedAvg where every hospital keeps its own normalisation parameters (Li et al., 2021)."""

    hints: ClassVar[dict[str, bool]] = {KEEP_LOCAL_NORM: True}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        marked = ConfigRecord({**config, **self.hints})
        return super().configure_train(server_round, arrays, marked, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        marked = ConfigRecord({**config, **self.hints})
        return super().configure_evaluate(server_round, arrays, marked, grid)


def request_hints(federation: dict[str, Any]) -> dict[str, bool]:
    """What the configured strategy adds to every request it configures, for rounds that
    another mechanism sends (secure aggregation)."""
    return dict(FedBN.hints) if federation["strategy"] == "fedbn" else {}


def build_strategy(federation: dict[str, Any], hospitals: int = 0) -> Strategy:
    """The strategy named by ``federation['strategy']`` with its sampling and settings;
    wrapped in central DP when asked (``hospitals``: how many train every round)."""
    sampling = {
        "fraction_train": federation["fraction_train"],
        "fraction_evaluate": federation["fraction_evaluate"],
        "min_train_nodes": federation["min_hospitals"],
        "min_evaluate_nodes": federation["min_hospitals"],
        "min_available_nodes": federation["min_hospitals"],
    }
    name = federation["strategy"]
    if name == "fedprox":
        return FedProx(proximal_mu=federation["proximal_mu"], **sampling)
    if name in ("fedadam", "fedyogi"):
        cls = FedAdam if name == "fedadam" else FedYogi
        return cls(eta=federation["server_lr"], eta_l=federation["server_lr"], **sampling)
    if name == "fedavgm":
        return FedAvgM(server_momentum=federation["server_momentum"], **sampling)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=federation["trim_beta"], **sampling)
    if federation["central_dp"]:
        return DifferentialPrivacyServerSideFixedClipping(
            FedAvg(weighted_by_key=UNIFORM_WEIGHT, **sampling),
            noise_multiplier=federation["central_noise_multiplier"],
            clipping_norm=federation["central_clipping_norm"],
            num_sampled_clients=max(hospitals, federation["min_hospitals"]))
    return {"fedavg": FedAvg, "fedmedian": FedMedian, "fedbn": FedBN}[name](**sampling)
