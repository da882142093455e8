"""The sample digits CNN of :mod:`quantfw.samples` as an ONNX model, for demos, tests, benchmarks.

Public: other plugins and users may import it.  The network is trained in numpy by
:func:`quantfw.samples.digits_cnn_weights`; this module only writes it out with
:mod:`onnx.helper`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from quantfw.samples import DIGITS_CNN_LAYERS, DigitsData, digits_cnn_weights, digits_data

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["digits_cnn", "digits_cnn_onnx"]


def digits_cnn_onnx(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The digits CNN with ``weights`` (see :func:`quantfw.samples.digits_cnn_weights`) as ONNX.

    Opset 17, IR version 8; input ``"image"`` float32 ``[batch, 1, 8, 8]``, output ``"logits"``
    ``[batch, 10]``, batch dimension dynamic.  Nodes are named after the layers of
    :data:`quantfw.samples.DIGITS_CNN_LAYERS` (plus ``relu1``..``relu4``); the initializers are
    ``weights`` under their own names, in its order.  The model passes ONNX's full check.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    last = DIGITS_CNN_LAYERS[-1][1]
    nodes = []
    cur, relus = "image", 0
    for kind, name, _ in DIGITS_CNN_LAYERS:
        if kind == "conv":
            nodes.append(
                helper.make_node(
                    "Conv",
                    [cur, f"{name}.weight", f"{name}.bias"],
                    [name],
                    name=name,
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                )
            )
        elif kind == "pool":
            nodes.append(
                helper.make_node(
                    "MaxPool", [cur], [name], name=name, kernel_shape=[2, 2], strides=[2, 2]
                )
            )
        elif kind == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], ["flat"], name=name, axis=1))
            name = "flat"
        else:
            out = "logits" if name == last else name
            nodes.append(
                helper.make_node(
                    "Gemm", [cur, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1
                )
            )
        cur = name
        if kind == "conv" or (kind == "fc" and name != last):
            relus += 1
            nodes.append(helper.make_node("Relu", [cur], [f"relu{relus}"], name=f"relu{relus}"))
            cur = f"relu{relus}"
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(a, k) for k, a in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="quantfw.models"
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    onnx.checker.check_model(model, full_check=True)
    return model


def digits_cnn(
    seed: int = 0, *, epochs: int = 8, batch: int = 32, lr: float = 3e-3
) -> tuple[onnx.ModelProto, DigitsData]:
    """The numpy-trained digits CNN as an ONNX model, with the digits data it was trained on.

    The weights are :func:`quantfw.samples.digits_cnn_weights` for the same arguments (training
    runs once per argument set and process); the data is :func:`quantfw.samples.digits_data`:
    calibrate on ``data.x_calib``, score with ``data.accuracy(logits)`` on ``data.x_test``.
    Every call returns a fresh ModelProto.

    :raises ImportError: when scikit-learn (the digits data) is not installed.
    """
    weights = digits_cnn_weights(seed, epochs=epochs, batch=batch, lr=lr)
    return digits_cnn_onnx(weights), digits_data()
