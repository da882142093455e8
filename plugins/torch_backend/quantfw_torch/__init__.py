"""quantfw-torch: quantize ``torch.nn.Module`` models with quantfw, and train them quantization-aware.

Registered with quantfw through the ``quantfw`` entry-point group (``quantfw_torch.plugin``).
What the frontend does and why it captures the way it does: :mod:`quantfw_torch.export`.
"""

__version__ = "0.1.0"
