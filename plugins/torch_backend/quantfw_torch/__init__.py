"""quantfw-torch: quantize ``torch.nn.Module`` models with quantfw, and train them quantization-aware.

Registered with quantfw through the ``quantfw`` entry-point group (``quantfw_torch.plugin``).
What the frontend does and why it captures the way it does: :mod:`quantfw_torch.export`.
"""

__version__ = "0.1.0"

__all__ = ["TorchModel", "load_state_dict", "simulated_module", "__version__"]


def __getattr__(name: str):  # lazy: importing the package (the plugin hook) must not load torch
    if name in ("TorchModel", "load_state_dict", "simulated_module"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
