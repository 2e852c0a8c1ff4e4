"""What federated training does with a model's state: which parts are normalisation
layers (FedBN keeps them local), and the FedProx proximal term."""

from __future__ import annotations

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys (weights, biases, running statistics) of normalisation layers."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{name}." if name else ""
            keys |= {prefix + key for key in module.state_dict()}
    return keys


def proximal_penalty(model: nn.Module, reference: dict[str, torch.Tensor], mu: float):
    """FedProx's (mu / 2) * ||w - w_global||^2 over trainable parameters, as a loss term."""
    anchors = {name: tensor.detach().clone() for name, tensor in reference.items()}

    def penalty(current: nn.Module) -> torch.Tensor:
        total = sum(((p - anchors[n].to(p.device)) ** 2).sum()
                    for n, p in current.named_parameters() if p.requires_grad)
        return 0.5 * mu * total

    return penalty
