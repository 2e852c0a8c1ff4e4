"""Training loss: cross-entropy of each head, where its label exists.

The stenosis head is weighted 1, 2, 4 for normal/mild, moderate and severe, as
the RSNA 2024 metric weights them; a missing label (-1) adds nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.grading.model import GRADES

SEVERITY_WEIGHTS = (1.0, 2.0, 4.0)


def grading_loss(logits: torch.Tensor, grade: torch.Tensor, severity: torch.Tensor
                 ) -> torch.Tensor:
    """Summed per-sample loss / batch size for (B, 8) logits and (B,) labels (-1 = unknown).

    Each sample's loss depends on its own logits only (needed by per-sample DP clipping)."""
    weights = torch.tensor(SEVERITY_WEIGHTS, device=logits.device)
    grade_loss = F.cross_entropy(logits[:, :GRADES], grade.clamp(min=0), reduction="none")
    severity_loss = F.cross_entropy(logits[:, GRADES:], severity.clamp(min=0), reduction="none")
    total = (grade_loss * (grade >= 0) + severity_loss * weights[severity.clamp(min=0)]
             * (severity >= 0))
    return total.sum() / len(logits)
