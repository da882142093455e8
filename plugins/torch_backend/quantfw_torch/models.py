"""Reference models as torch modules, for the torch plugin's tests and benchmarks.

* :func:`digits_cnn_module` -- the sample digits CNN of :mod:`quantfw.samples` rebuilt from
  ``torch.nn`` layers and loaded with the very same numpy-trained weights, so torch-side and
  ONNX-side (``quantfw_onnx.samples.digits_cnn``) measurements start from one float model.

The digits CNN's training stays in :mod:`quantfw.samples` (numpy only, cached per seed); this
module only copies the weights it produced.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from quantfw.samples import digits_cnn_weights

from .digits_resnet import digits_resnet, digits_resnet_onnx, digits_torch_model

__all__ = ["digits_cnn_module", "digits_resnet", "digits_resnet_onnx", "digits_torch_model"]


def _digits_layers() -> nn.Sequential:
    """The untrained network, its children named after the ONNX model's nodes.

    Every ReLU and pooling step is its own module: PT2E quantizers group nodes by the module
    that produced them, and one shared ``nn.ReLU`` would merge four activations into one group.
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 32, kernel_size=3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(32, 64, kernel_size=3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(64, 128, kernel_size=3, padding=1)),
                ("relu3", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(512, 128)),
                ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(128, 10)),
            ]
        )
    )


def digits_cnn_module(seed: int = 0) -> nn.Sequential:
    """The trained digits CNN for ``seed`` as a float32 torch module in eval mode.

    NCHW float32 ``[N, 1, 8, 8]`` images in, ``[N, 10]`` logits out; layer for layer the network
    of :mod:`quantfw.samples.cnn`::

        conv1 1->32 3x3 pad 1, relu1
        conv2 32->64 3x3 pad 1, relu2, pool1 (max 2x2)
        conv3 64->128 3x3 pad 1, relu3, pool2 (max 2x2)
        flatten (512, channel-major like ONNX Flatten), fc1 512->128, relu4, fc2 128->10

    The weights are :func:`quantfw.samples.digits_cnn_weights` with its default training
    settings, so a seed gives the same weights as the ONNX model of
    ``quantfw_onnx.samples.digits_cnn``; training is cached, so it runs once per seed and process.
    Parameter names (``conv1.weight`` ... ``fc2.bias``) are the ONNX initializer names and are
    loaded strictly.  Each call returns a new module with its own copy of the weights.  Its logits
    equal :func:`quantfw.samples.digits_cnn_forward`'s up to float32 rounding (about 1e-5).
    """
    weights = digits_cnn_weights(seed)
    module = _digits_layers()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return module.eval()
