"""AdaRound and AdaQuant on the core alone: option checks, and the clear error when no compute
engine with autograd is installed.  Learning itself needs one (torch): see
tests/plugin_torch/test_adaround_torch.py, which runs both on the core ``graph`` frontend too."""

import numpy as np
import pytest

import quantfw
from quantfw import Node, QuantGraph
from quantfw.algorithms.adaquant import AdaQuant
from quantfw.algorithms.adaround import AdaRound


def one_linear() -> QuantGraph:
    rng = np.random.default_rng(0)
    return QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w"})],
        ["x"],
        ["y"],
        {"w": rng.normal(size=(4, 8)).astype(np.float32)},
        name="one",
    )


@pytest.mark.parametrize(
    ("cls", "options", "words"),
    [
        (AdaRound, {"iters": 0}, "adaround: option iters=0 must be a positive integer"),
        (AdaRound, {"batch_size": 2.5}, "option batch_size=2.5 must be a positive integer"),
        (AdaRound, {"lam": -1}, "option lam=-1 must be a number >= 0"),
        (AdaRound, {"lr": 0}, "option lr=0 must be a positive number"),
        (AdaRound, {"warmup": 1.0}, r"option warmup=1.0 must be a fraction of iters in \[0, 1\)"),
        (AdaRound, {"beta": (2, 20)}, r"option beta=\(2, 20\) must be \(start, end\)"),
        (AdaRound, {"beta": "twenty"}, "beta=20:2"),
        (AdaRound, {"seed": -1}, "option seed=-1 must be an integer >= 0"),
        (AdaRound, {"holdout": 0.9}, r"option holdout=0.9 must be a fraction of the data in"),
        (AdaRound, {"inputs": "fp32"}, r"option inputs='fp32' must be 'auto', 'quantized' \(earlier"),
        (AdaQuant, {"holdout": -0.1}, r"adaquant: option holdout=-0.1 must be a fraction"),
        (AdaQuant, {"max_samples": 0}, "adaquant: option max_samples=0 must be a positive"),
        (AdaQuant, {"learn_scale": "yes"}, "adaquant: option learn_scale='yes' must be true or"),
    ],
)
def test_bad_options_are_refused_with_the_algorithm_and_option_named(cls, options, words):
    with pytest.raises(ValueError, match=words):
        cls(**options)


def test_beta_reads_from_the_command_line_form():
    assert AdaRound(beta="10:1").beta == (10.0, 1.0)


@pytest.mark.parametrize("name", ["adaround", "adaquant"])
def test_without_an_autograd_engine_the_error_says_what_to_install(quantfw_registry_with, name):
    quantfw_registry_with()  # the built-ins alone: only the numpy engine
    x = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)
    with pytest.raises(Exception, match=r'pip install "quantfw\[torch\]"') as info:
        quantfw.quantize(one_linear(), x, target="generic", algorithms=["none", name])
    assert "autograd" in str(info.value)
