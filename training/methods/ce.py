"""Plain fine-tuning on the noisy labels (with the trusted rows among them): the baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labelaudit.training.methods.base import Batch, Method, StepStats


class CrossEntropy(Method):
    name = "ce"

    def loss(self, batch: Batch) -> tuple[torch.Tensor, StepStats]:
        x, y = self.trainer.inputs(batch), self.data.labels[batch.untrusted]
        loss = F.cross_entropy(self.trainer.model(x), y)
        return loss, StepStats(loss=loss.item(), seen=len(y))
