"""Planning: which tensor of a :class:`~quantfw.graph.QuantGraph` gets which QuantSpec on a target.

:func:`plan` is core logic, the same for every framework.  It follows the QDQ placement that ONNX
Runtime's and TensorRT's quantizers use, driven entirely by the :class:`~quantfw.target.TargetSpec`
and the user's :class:`Overrides`.

Rules, in the order they are applied
------------------------------------

1. **Ignored nodes** (``ignore_names``, ``ignore_patterns`` as :mod:`fnmatch` globs over node
   names, ``ignore_ops``) run in float.  Like float-only nodes, *nothing is quantized on their
   behalf*; a tensor they read or write may still be quantized because a quantized neighbour needs
   it (a quantized producer's output, a quantized consumer's input).
2. **Eligible nodes** are those whose op kind is in the target's ``ops.quantize`` and that are not
   ignored.  In dynamic mode only the kinds in ``dynamic.ops`` are eligible (ONNX Runtime's
   dynamic quantization covers weighted ops only); the rest stay float.
3. **Fusions**: starting from an eligible node, each target chain (longest first) is matched along
   single-consumer edges (the intermediate tensor must have exactly one reader and must not be a
   graph output; no member may be ignored or already fused).  A matched chain is one quantized
   unit: its intermediate tensors stay float, its external inputs are quantized, and the last
   member's output is the unit's output.
4. **A quantized unit** (an eligible node or a fused chain, specs resolved for its first node):

   * its activation inputs get the activation spec (index inputs of ``embedding``/``gather``,
     extra inputs of single-data ops such as reshape's shape, and integer constants are skipped;
     float constants become ``weight``-role tensors quantized with the activation spec);
   * its ``weights["weight"]`` gets the weight spec; per-channel axis from
     ``attrs["channel_axis"]`` (default 0; 1 for conv_transpose), per-group axis from
     ``attrs["reduction_axis"]`` (default: the other axis of a 2-D weight, i.e. 1 for ``(out,
     in)``);
   * its ``weights["bias"]`` becomes an int32 ``bias`` tensor with ``bias_of = (input activation,
     weight)`` when the target's bias mode is ``int32``, activations are static integers and the
     weight is an integer per-tensor or per-channel spec; otherwise the bias stays float (not in
     the plan);
   * its output is quantized when the target's ``ops.quantize_outputs`` is ``always`` (ONNX
     Runtime QDQ, TFLite: a quantized kernel writes a quantized tensor, so Q/DQ pairs are
     complete), or, with ``when_consumed`` (TensorRT), only when a quantized consumer reads it;
   * a **weight-only** unit (weight dtype in the target's ``allowed.weight_only_dtypes``, or
     granularity in ``allowed.weight_only_granularities``) quantizes its weight and nothing
     else;
   * in **dynamic mode** activation inputs get a dynamic spec (``dynamic.granularity``), outputs
     and biases stay float, and there are no shared or fixed scales.

   **Weight-only kinds** (the target's ``ops.weight_only``, e.g. ``embedding``): a node of such a
   kind that is not ignored quantizes its ``weights["weight"]`` with the weight spec (per-channel
   axis from ``attrs["channel_axis"]``, default 0: one scale per row of an embedding table) and
   nothing else -- its indices, output and bias stay float -- in static and dynamic mode alike.
5. **Fixed-output** kinds record the runtime's params in the output's ``fixed_params``.
6. **Shared scales** (static mode): a shared-scale node in ``ops.quantize`` (concat) is a unit whose
   data inputs and output are joined into one share group.  A shared-scale node *not* in
   ``ops.quantize`` (max_pool, reshape…) becomes quantized as soon as one of its data inputs or its
   output is quantized by someone else (repeated until nothing changes), and joins its tensors to
   the group too.  Groups are merged transitively (union-find), so a concat of two branches
   followed by a max_pool is one group.  Every member of a group gets the same spec (and the same
   fixed params, when one member has them).
7. **One spec per tensor**: a tensor read by a quantized consumer takes that consumer's activation
   spec (the first such consumer in graph order); otherwise its producer's.  Disagreements are
   reported as warnings.

Overrides that the target does not allow raise :class:`PlanError` naming the layer, the field,
the value, where it was set, and the target's allowed values.  Patterns and names that match no
node give warnings in :attr:`QuantPlan.warnings`, not errors.
"""

from .driver import plan
from .overrides import Overrides, PlanError
from .result import NodeDecision, QuantPlan, TensorPlan

__all__ = [
    "PlanError",
    "Overrides",
    "TensorPlan",
    "NodeDecision",
    "QuantPlan",
    "plan",
]
