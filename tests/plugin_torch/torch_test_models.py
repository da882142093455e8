"""Torch models for the torch plugin's tests (imported by the tests, which skip without torch)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _seeded() -> None:
    torch.manual_seed(0)
    torch.backends.mkldnn.enabled = False


class ResBlockNet(nn.Module):
    """Conv+BN+ReLU stem, a residual block with BatchNorm, global pooling, a classifier."""

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        y = torch.relu(self.bn0(self.stem(x)))
        z = torch.relu(self.bn1(self.conv1(y)))
        z = self.bn2(self.conv2(z))
        y = torch.relu(y + z)
        return self.fc(self.pool(y).flatten(1))


def build_resnet() -> ResBlockNet:
    _seeded()
    m = ResBlockNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        for bn in (m.bn0, m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers pooling: the mean over real tokens, L2-normalised."""
    m = mask[..., None].astype(np.float32)
    e = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def small_mlp() -> nn.Sequential:
    """Linear-ReLU-Linear-Tanh-Linear, 16 -> 4, fixed seed: the layer-wise and block tests' model."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 4))


def mlp_rows(seed: int = 1, n: int = 96) -> np.ndarray:
    """``n`` standard-normal rows of 16 features for :func:`small_mlp`."""
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
