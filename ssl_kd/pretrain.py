"""Self-supervised pretraining of a teacher with lightly (SimCLR), through the one training loop.

SimCLR (Chen et al., ICML 2020): two augmented views of each image, a projection MLP g, and the
NT-Xent loss over the 2B projections of a batch, positives = the two views of the same image:
    L = -(1/2B) sum_i log( exp(cos(z_i, z_j(i)) / tau) / sum_{k != i} exp(cos(z_i, z_k) / tau) ).
lightly provides the head (`SimCLRProjectionHead`) and the loss (`NTXentLoss`).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import register_normalization


class SimCLRObjective(nn.Module):
    def __init__(self, backbone: nn.Module, mean, std, *, proj_dim: int = 128, temperature: float = 0.2):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        dim = backbone.num_features
        self.trainable = nn.ModuleDict({"backbone": backbone, "head": SimCLRProjectionHead(dim, dim, proj_dim)})
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=torch.distributed.is_initialized())
        register_normalization(self, mean, std)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict:
        x = (torch.cat(views) - self.mean) / self.std
        z = self.trainable["head"](self.trainable["backbone"](x)).float()
        z0, z1 = z.chunk(2)
        return {"loss": self.criterion(z0, z1)}

    def after_step(self) -> None:
        pass

    def projection_head_record(self) -> dict:
        """The head for `save_teacher(head=...)`: lightly's `SimCLRProjectionHead` keeps its layers in `.layers`
        (Linear, BatchNorm1d, ReLU, Linear), so its `layers.N.*` keys are the `N.*` a projection head is read by."""
        layers = self.trainable["head"].layers.state_dict()
        return {"state_dict": {key: value.detach().cpu() for key, value in layers.items()}, "activation": "relu",
                "name": "SimCLR projection MLP (lightly)"}
