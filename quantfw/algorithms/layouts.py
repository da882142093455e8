"""Per-channel views of conv and linear weights, shared by cross-layer equalisation and the
finalize-stage corrections.

A weight is handled in its *canonical* view ``(out, in/groups, *kernel)``: the output-channel axis
is the node's ``channel_axis`` (0 for torch and ONNX convs and ``Gemm(transB=1)``, 1 for ONNX
``MatMul``), the input-channel axis its ``reduction_axis`` where the frontend set one, else the
axis next to it (conv ``(O, I, kh, kw)``: 1; ``channel_axis`` last, TF ``HWIO``: the one before;
linear: the other axis).  Input channel ``i`` of a grouped convolution is input ``i %
(in/groups)`` of the output channels of group ``i // (in/groups)``, so one input channel of a
depthwise convolution is the single filter of that channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Node, OpKind

__all__ = ["WeightLayout", "weight_layout", "activation_channel_axis"]


@dataclass(frozen=True)
class WeightLayout:
    """Where a layer's weight keeps its channels.

    :ivar out_axis: the output-channel axis of the stored weight.
    :ivar in_axis: the input-channel axis (of size ``in_channels / groups``).
    :ivar groups: convolution groups (1 for linear layers).
    """

    out_axis: int
    in_axis: int
    groups: int

    def canonical(self, w: np.ndarray) -> np.ndarray:
        """``w`` as ``(out, in/groups, *rest)`` (a view)."""
        return np.moveaxis(w, (self.out_axis, self.in_axis), (0, 1))

    def stored(self, c: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`canonical`."""
        return np.moveaxis(c, (0, 1), (self.out_axis, self.in_axis))

    def out_channels(self, w: np.ndarray) -> int:
        return int(w.shape[self.out_axis])

    def in_channels(self, w: np.ndarray) -> int:
        return int(w.shape[self.in_axis]) * self.groups

    def _in_index(self, w: np.ndarray) -> np.ndarray:
        """``(out, in/groups)`` array of the input channel each weight column multiplies."""
        cout, cin_g = w.shape[self.out_axis], w.shape[self.in_axis]
        group = np.arange(cout) // (cout // self.groups)
        return group[:, None] * cin_g + np.arange(cin_g)[None, :]

    def out_absmax(self, w: np.ndarray) -> np.ndarray:
        """``max |w|`` per output channel, float64."""
        c = self.canonical(np.abs(np.asarray(w, np.float64)))
        return c.reshape(c.shape[0], -1).max(axis=1)

    def in_absmax(self, w: np.ndarray) -> np.ndarray:
        """``max |w|`` per input channel (all the output channels reading it), float64."""
        c = self.canonical(np.abs(np.asarray(w, np.float64)))
        per = c.reshape(c.shape[0], c.shape[1], -1).max(axis=2)  # (out, in/groups)
        out = np.zeros(self.in_channels(w))
        np.maximum.at(out, self._in_index(w).ravel(), per.ravel())
        return out

    def in_sums(self, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per output channel, ``sum_i v_i * (sum of the weights on input channel i)``: the
        layer's response to the constant input ``v`` (per channel) without zero padding."""
        c = self.canonical(np.asarray(w, np.float64))
        per = c.reshape(c.shape[0], c.shape[1], -1).sum(axis=2)
        return (per * np.asarray(v, np.float64)[self._in_index(w)]).sum(axis=1)

    def scale_out(self, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``w`` with output channel ``o`` multiplied by ``s[o]``."""
        c = self.canonical(w)
        shape = (-1,) + (1,) * (c.ndim - 1)
        return self.stored(c * np.asarray(s).reshape(shape))

    def scale_in(self, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``w`` with the weights on input channel ``i`` multiplied by ``s[i]``."""
        c = self.canonical(w)
        f = np.asarray(s)[self._in_index(w)]
        return self.stored(c * f.reshape(f.shape + (1,) * (c.ndim - 2)))


def weight_layout(node: Node, w: np.ndarray) -> WeightLayout | None:
    """The layout of a ``conv`` or ``linear`` node's weight, ``None`` when the attributes do not
    describe one (an unknown rank or axis, channels not divisible by the groups)."""
    if node.op not in (OpKind.CONV, OpKind.LINEAR) or w.ndim < 2:
        return None
    out_axis = int(node.attrs.get("channel_axis", 0)) % w.ndim
    if "reduction_axis" in node.attrs:
        in_axis = int(node.attrs["reduction_axis"]) % w.ndim
    elif node.op is OpKind.LINEAR:
        if w.ndim != 2:
            return None
        in_axis = 1 - out_axis
    else:
        in_axis = 1 if out_axis == 0 else (out_axis - 1) % w.ndim
    if in_axis == out_axis:
        return None
    groups = int(node.attrs.get("groups", 1)) if node.op is OpKind.CONV else 1
    if groups < 1 or w.shape[out_axis] % groups:
        return None
    return WeightLayout(out_axis, in_axis, groups)


def activation_channel_axis(node: Node, ndim: int) -> int:
    """The axis of a conv/linear node's output (or input) activation that holds its channels:
    1 for a channels-first convolution (``channel_axis`` 0, NCHW), else the last."""
    if node.op is OpKind.CONV and int(node.attrs.get("channel_axis", 0)) == 0 and ndim > 2:
        return 1
    return ndim - 1
