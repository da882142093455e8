"""Sample data and models for demos, tests and benchmarks, built from what ships with packages.

* :mod:`~quantfw.samples.digits` -- scikit-learn's 8x8 digits, split once into train /
  calibration / test parts (:func:`digits_data`).
* :mod:`~quantfw.samples.cnn` -- a small CNN for them, trained in numpy
  (:func:`digits_cnn_weights`, :func:`digits_cnn_forward`).
* :mod:`~quantfw.samples.mlp` -- a two-layer MLP trained in numpy, as a QuantGraph
  (:func:`train_digits_mlp`).
* :mod:`~quantfw.samples.text` -- English sentences from the standard library's docstrings
  (:func:`docstring_sentences`).

Numpy only; the digits need scikit-learn (``pip install "quantfw[demo]"``), imported when the data
is first asked for.  ``import quantfw`` does not import this package.
"""

from .cnn import DIGITS_CNN_LAYERS, digits_cnn_forward, digits_cnn_weights
from .digits import DIGITS_SPLIT, DIGITS_SPLIT_SEED, DigitsData, digits_data
from .mlp import train_digits_mlp
from .text import DOCSTRING_MODULES, docstring_sentences, sentence_pool

__all__ = [
    "DIGITS_CNN_LAYERS",
    "DIGITS_SPLIT",
    "DIGITS_SPLIT_SEED",
    "DOCSTRING_MODULES",
    "DigitsData",
    "digits_cnn_forward",
    "digits_cnn_weights",
    "digits_data",
    "docstring_sentences",
    "sentence_pool",
    "train_digits_mlp",
]
