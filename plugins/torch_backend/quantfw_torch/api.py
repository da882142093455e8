"""The public API of quantfw-torch, for users and for other plugins.

Other plugins import this module and nothing else of quantfw-torch (a test enforces it).
Importing it imports torch; ``import quantfw_torch`` alone does not.
"""

from .convert import TorchToOnnx
from .engine import TorchEngine
from .export import CaptureError, TorchModel
from .fakequant import Equalize, FakeQuantize
from .frontend import TorchFrontend, simulated_module
from .weights import WeightsFileError, load_state_dict

__all__ = [
    "CaptureError",
    "Equalize",
    "FakeQuantize",
    "TorchEngine",
    "TorchFrontend",
    "TorchModel",
    "TorchToOnnx",
    "WeightsFileError",
    "load_state_dict",
    "simulated_module",
]
