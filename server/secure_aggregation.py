"""Rounds under secure aggregation: the coordinator sees only the sum of the updates.

Flower 1.42 runs SecAgg+ (Bell et al., 2020) only on its legacy path, so each
round's training goes through Flower's ``SecAggPlusWorkflow`` with a legacy
FedAvg; validation (in the train requests, a separate evaluation after the
last round: ``server.folded_validation``), recording and the round-end callback
are those of every other run. Each hospital's weights are clipped to ``[-c, c]``
(``secagg_clipping_range``), quantised, masked with pairwise and private masks,
and only their sum is unmasked; any ``secagg_threshold`` fraction of a node's
neighbours can rebuild the masks of a node that drops out, so the round still
completes (the threshold is at least a majority of the sampled hospitals, whatever
the fraction: hospitals refuse less). The average is uniform over the hospitals
that finished (each weight 1). Per-hospital metrics (loss, epsilon, ...) still reach the server;
weights do not, so per-update validation is impossible here and only the
aggregate is checked (finite, right shapes).
"""

from __future__ import annotations

import json
import math
import timeit
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ClientManager, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from server.folded_validation import validates_global
from server.recorder import HospitalRecorder
from server.resumption import SERVER_ROUND
from server.sampling import wait_for_hospitals
from tasks.protocol import VALIDATE_GLOBAL, WEIGHT_KEYS


class _RecordedSum(LegacyFedAvg):
    """Legacy FedAvg over the unmasked sum; notes each hospital's training metrics and
    which sampled hospitals sent no masked update."""

    def __init__(self, recorder: HospitalRecorder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorder = recorder
        self.sampled: list[int] = []

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self.sampled = [proxy.node_id for proxy, _ in instructions]
        return instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        for proxy, fit in results:
            self.recorder.record_train(server_round, proxy.node_id, fit.metrics)
        for failure in failures:
            log(WARNING, "round %s: secure aggregation: %s", server_round, failure)
        answered = {proxy.node_id for proxy, _ in results}
        self.recorder.record_silent(server_round, self.recorder.silent(self.sampled, answered),
                                    "train", "no masked update in secure aggregation (dropped "
                                    "out, refused or failed; see the hospital's audit log)")
        return super().aggregate_fit(server_round, results, failures)


class SecureAggregation:
    """Training rounds by SecAgg+; validation and recording as in every other run.

    ``recorder`` wraps the Message-API strategy that evaluates and records;
    ``federation.min_hospitals`` must be connected for a round (waiting at most the round
    timeout).
    """

    def __init__(self, recorder: HospitalRecorder, federation: dict[str, Any]) -> None:
        self.recorder = recorder
        self.federation = federation

    def workflow(self, sampled: int, timeout: float) -> SecAggPlusWorkflow:
        """Flower's SecAgg+ workflow for ``sampled`` hospitals: shares to every other one,
        ``majority_threshold`` of them needed to rebuild a dropped node's masks."""
        return SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=majority_threshold(self.federation["secagg_threshold"],
                                                        sampled),
            max_weight=1.0, clipping_range=self.federation["secagg_clipping_range"],
            timeout=timeout)

    def start(self, grid: Grid, context: Context, arrays: ArrayRecord, num_rounds: int,
              timeout: float, train_config: ConfigRecord, evaluate_config: ConfigRecord,
              evaluate_fn: Callable[[int, ArrayRecord], None]) -> ArrayRecord:
        """Run ``num_rounds`` rounds from ``arrays``; the final weights."""
        federation = self.federation
        keys = list(arrays.keys())
        config = {**train_config, WEIGHT_KEYS: json.dumps(keys)}
        strategy = _RecordedSum(
            self.recorder, fraction_fit=federation["fraction_train"], fraction_evaluate=0.0,
            min_fit_clients=federation["min_hospitals"],
            min_available_clients=federation["min_hospitals"],
            on_fit_config_fn=lambda server_round: {
                **config, SERVER_ROUND: server_round + self.recorder.round_offset,
                VALIDATE_GLOBAL: validates_global(server_round, self.recorder.round_offset > 0)})
        legacy = LegacyContext(context, ServerConfig(num_rounds=num_rounds,
                                                     round_timeout=timeout), strategy)
        thread, stop, ready = start_update_client_manager_thread(grid, legacy.client_manager)
        ready.wait()
        evaluate_fn(0, arrays)
        try:
            for server_round in range(1, num_rounds + 1):
                log(INFO, "[ROUND %s] secure aggregation", server_round)
                connected = wait_for_hospitals(grid, federation["min_hospitals"], timeout,
                                               self.recorder.names)
                legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({
                    WorkflowKey.CURRENT_ROUND: server_round,
                    WorkflowKey.START_TIME: timeit.default_timer()})
                legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                    ndarrays_to_parameters([arrays[k].numpy() for k in keys]), keep_input=True)
                self.workflow(strategy.num_fit_clients(len(connected))[0], timeout)(
                    grid, legacy)
                arrays = _named(legacy.state.array_records[MAIN_PARAMS_RECORD], arrays)
                if server_round == num_rounds:
                    self._evaluate(grid, server_round, arrays, evaluate_config, timeout)
                evaluate_fn(server_round, arrays)
        finally:
            stop.set()
            thread.join()
        return arrays

    def _evaluate(self, grid: Grid, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, timeout: float) -> None:
        wait_for_hospitals(grid, self.federation["min_hospitals"], timeout, self.recorder.names)
        messages = self.recorder.configure_evaluate(server_round, arrays, config, grid)
        replies = grid.send_and_receive(messages, timeout=timeout)
        self.recorder.aggregate_evaluate(server_round, replies)


def majority_threshold(fraction: float, shares: int) -> int:
    """Shares needed to rebuild a node's masks: the ``fraction`` of ``shares`` rounded up,
    and never less than a majority (hospitals refuse less: fewer colluding with the
    coordinator could unmask them). Flower's own rounding of a fraction can fall to half
    (0.6 of 4 is 2)."""
    return max(math.ceil(fraction * shares - 1e-9), shares // 2 + 1)


def _named(summed: ArrayRecord, current: ArrayRecord) -> ArrayRecord:
    """The unmasked average as named weights of the global model's shapes and dtypes (the
    current weights when the round produced no finite aggregate of those shapes)."""
    averaged = parameters_to_ndarrays(compat.arrayrecord_to_parameters(summed, keep_input=True))
    old = {key: current[key].numpy() for key in current}
    usable = len(averaged) == len(old) and all(
        value.shape == before.shape and np.all(np.isfinite(value))
        for value, before in zip(averaged, old.values(), strict=True))
    if not usable:
        log(WARNING, "secure aggregation gave no usable aggregate; weights unchanged")
        return current
    return ArrayRecord({key: Array(np.asarray(value, dtype=before.dtype))
                        for (key, before), value in zip(old.items(), averaged, strict=True)})
