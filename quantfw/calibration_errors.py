"""The errors of calibration data: unusable data, a failing ``module:function`` source, and
no data where the quantization needs some."""

from __future__ import annotations

from .errors import QuantfwError

__all__ = ["CalibrationError", "CalibrationRequiredError", "CalibrationSourceError"]


class CalibrationError(ValueError):
    """Calibration data that cannot be used."""


class CalibrationSourceError(CalibrationError, QuantfwError):
    """A ``module:function`` calibration source failed: the module cannot be imported or does
    not have the function, or the user's code raised (importing the module, calling the
    function, or iterating over what it returned).  ``__cause__`` is the original exception,
    whose traceback the command line prints under ``--verbose``."""

    def __init__(self, spec: str, what: str, cause: BaseException | None = None) -> None:
        self.spec = spec
        self.show_cause = cause is not None
        detail = f" raised {type(cause).__name__}: {cause}" if cause is not None else ""
        super().__init__(f"calibration source {spec!r}: {what}{detail}")


class CalibrationRequiredError(QuantfwError, ValueError):
    """The quantization runs the model and no calibration data was given.  The ways out are
    kept as data, so that the Python API and the command line each name them in their terms."""

    #: terms -> (how to give the data, how to quantize dynamically, how to skip SmoothQuant)
    WAYS = {
        "python": (
            "pass calibration_data",
            "overrides={'dynamic': True}",
            "algorithms=['none']",
        ),
        "cli": (
            "pass --calib (a .npz file, a folder of .npy files, or module:function)",
            "--dynamic",
            "-a none",
        ),
    }

    def message(self, terms: str = "python") -> str:
        data, dynamic, no_smooth = self.WAYS[terms]
        return (
            f"this quantization runs the model, which needs calibration data: {data}.  Static "
            f"activation ranges need it (quantize activations dynamically instead with {dynamic}, "
            "where the target allows it), and so do algorithms that read activations "
            f"(SmoothQuant, layer-wise methods; skip SmoothQuant with {no_smooth})"
        )

    def __str__(self) -> str:
        return self.message("python")

    def cli_message(self) -> str:
        return self.message("cli")
