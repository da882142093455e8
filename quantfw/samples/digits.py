"""scikit-learn's 8x8 handwritten digits, split once for every demo, test and benchmark.

The images ship inside scikit-learn (nothing is downloaded); scikit-learn is imported only when
the data is asked for, so ``quantfw.samples`` imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DIGITS_SPLIT", "DIGITS_SPLIT_SEED", "DigitsData", "digits_data"]

#: Fractions of the 1797 digits images in the train / calibration / test parts.  The split is a
#: permutation drawn with ``numpy.random.default_rng(DIGITS_SPLIT_SEED)``: the first 60 % of the
#: permuted indices train the network, the next 10 % are the calibration set, the last 30 % the
#: test set.  The split does not depend on any training seed, so every model sees the same test set.
DIGITS_SPLIT = (0.6, 0.1, 0.3)
DIGITS_SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsData:
    """The digits images as NCHW float32 ``[N, 1, 8, 8]`` (pixel / 16, so in [0, 1]) and labels.

    The three parts are disjoint (``*_index`` are row numbers into ``load_digits()``).  A model
    without convolutions takes the images as rows of 64 pixels: ``x.reshape(len(x), 64)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray = field(repr=False)
    calib_index: np.ndarray = field(repr=False)
    test_index: np.ndarray = field(repr=False)

    def accuracy(self, logits: np.ndarray) -> float:
        """Top-1 accuracy of ``logits`` (``[len(x_test), 10]``) on the test labels."""
        logits = np.asarray(logits)
        if logits.shape != (len(self.y_test), 10):
            raise ValueError(
                f"expected logits of shape {(len(self.y_test), 10)}, got {logits.shape}"
            )
        return float(np.mean(np.argmax(logits, axis=1) == self.y_test))


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits data ships with scikit-learn, which is not installed: "
            'pip install "quantfw[demo]"'
        ) from exc
    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


def digits_data() -> DigitsData:
    """The digits split into train / calibration / test parts (see :data:`DIGITS_SPLIT`).

    :raises ImportError: when scikit-learn is not installed (the message says how to install it).
    """
    x, y = _load_digits()
    n = len(x)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(n)
    n_train = int(round(DIGITS_SPLIT[0] * n))
    n_calib = int(round(DIGITS_SPLIT[1] * n))
    tr, ca, te = order[:n_train], order[n_train : n_train + n_calib], order[n_train + n_calib :]
    return DigitsData(
        x_train=x[tr],
        y_train=y[tr],
        x_calib=x[ca],
        y_calib=y[ca],
        x_test=x[te],
        y_test=y[te],
        train_index=tr,
        calib_index=ca,
        test_index=te,
    )
