"""Small builders shared by the teacher tests."""

from __future__ import annotations

import timm
import torch
from torch import nn


def random_model(arch: str = "resnet18", seed: int = 0, num_classes: int = 0) -> nn.Module:
    """A random timm model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
