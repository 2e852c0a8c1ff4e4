"""A server optimiser's state across a resumption.

FedAvgM keeps a momentum vector and FedAdam and FedYogi keep first and second moment
estimates between rounds, on the strategy object: a resumed run would start them from
nothing and take other steps than an uninterrupted one. The round checkpoint keeps them
(as tensors, so ``torch.load(weights_only=True)`` reads them back) and a resumed run puts
them back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

SERVER_OPTIMISER = "server-optimiser"
# Flower's attribute names: FedAvgM's momentum (a list of arrays), FedOpt's moments (dicts)
_BUFFERS = ("momentum_vector", "m_t", "v_t")


def optimiser_state(strategy: Strategy) -> dict[str, Any]:
    """The strategy's optimiser buffers that hold a value, as tensors (empty for FedAvg)."""
    state: dict[str, Any] = {}
    for name in _BUFFERS:
        value = getattr(strategy, name, None)
        if isinstance(value, list):
            state[name] = [torch.tensor(np.asarray(v)) for v in value]
        elif isinstance(value, dict):
            state[name] = {k: torch.tensor(np.asarray(v)) for k, v in value.items()}
    return state


def restore_optimiser(strategy: Strategy, state: dict[str, Any]) -> None:
    """Put ``state`` (from ``optimiser_state``) back into ``strategy``; a buffer the strategy
    does not have (the run's strategy was changed) is left out, with a warning."""
    for name, value in state.items():
        if name not in _BUFFERS or not hasattr(strategy, name):
            log(30, "The round checkpoint's server optimiser state '%s' does not fit "
                "strategy %s; it starts afresh", name, type(strategy).__name__)
            continue
        if isinstance(value, list):
            setattr(strategy, name, [v.numpy() for v in value])
        else:
            setattr(strategy, name, {k: v.numpy() for k, v in value.items()})
