"""Cross-layer equalisation, high-bias absorption, bias correction and BN re-estimation on the
core alone (the numpy ``graph`` frontend), checked against closed forms and the reference
interpreter."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cle_models import cnn, images

import quantfw
from quantfw import Node, QuantGraph
from quantfw.algorithms.cle import equalization_scales, find_pairs
from quantfw.algorithms.layouts import weight_layout
from quantfw.graph_frontend import GraphFrontend
from quantfw.interpreter import run_graph
from quantfw.numerics import quantize

DOC = Path(__file__).resolve().parents[1] / "docs" / "algorithms" / "cle-bias-correction.md"
W4_TENSOR = {"weight": {"bits": 4, "granularity": "per_tensor"}}
W4_CHANNEL = {"weight": {"bits": 4}}


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(((got - want) ** 2).mean()) / want.std())


def quantize_cnn(graph, algorithms, overrides=None, x=None):
    return quantfw.quantize(
        graph, images(1) if x is None else x, target="generic", algorithms=algorithms,
        overrides=overrides,
    )  # fmt: skip


def sim_err(res, graph, x) -> float:
    return rel_err(res.simulate()({"x": x})["y"], run_graph(graph, {"x": x})["y"])


# -- cross-layer equalisation ------------------------------------------------------------------
def test_scales_closed_form():
    s = equalization_scales(np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0]))
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0])  # sqrt(r1 r2) / r2; 1 for a dead channel
    r1, r2 = np.array([4.0, 1.0]), np.array([1.0, 4.0])
    np.testing.assert_allclose(r1 / s[:2], r2 * s[:2])  # both become sqrt(r1 r2)


def test_pairs_follow_chains_through_relu_and_max_pool_but_not_flatten():
    pairs = find_pairs(cnn())
    assert [(p.first.name, p.second.name) for p in pairs] == [("conv1", "dw"), ("dw", "pw")]
    assert [n.name for n in pairs[0].between] == ["relu1"]


def test_a_second_reader_or_a_graph_output_breaks_the_chain():
    g = cnn()
    g2 = QuantGraph(
        [*g.nodes, Node("tap", "relu", ["c1"], ["t"])], ["x"], ["y", "t"], g.initializers
    )
    assert [(p.first.name, p.second.name) for p in find_pairs(g2)] == [("dw", "pw")]
    g3 = QuantGraph(g.nodes, ["x"], ["y", "a2"], g.initializers)
    assert [(p.first.name, p.second.name) for p in find_pairs(g3)] == [("conv1", "dw")]


def test_cle_keeps_the_float_model_and_balances_the_ranges():
    g = cnn()
    res = quantize_cnn(g, [("cle", {"absorb": False, "tol": 1e-6, "iters": 200})])
    rec = res.recipe.provenance["cle"]
    assert rec["converged"] and [p["first"] for p in rec["pairs"]] == ["conv1", "dw"]
    w = {k: res.recipe.weights.get(k, v) for k, v in g.initializers.items()}
    # the float function is unchanged: the reference interpreter with the rewritten weights
    x = images(7)
    np.testing.assert_allclose(
        run_graph(g, {"x": x}, weights=w)["y"], run_graph(g, {"x": x})["y"], rtol=1e-4, atol=1e-4
    )
    # the ranges are balanced: r1_i / max r1 == r2_i / max r2 for both pairs of the chain
    for first, second in (("w1", "wd"), ("wd", "w3")):
        n1 = next(n for n in g.nodes if n.weights.get("weight") == first)
        n2 = next(n for n in g.nodes if n.weights.get("weight") == second)
        r1 = weight_layout(n1, w[first]).out_absmax(w[first])
        r2 = weight_layout(n2, w[second]).in_absmax(w[second])
        np.testing.assert_allclose(r1 / r1.max(), r2 / r2.max(), rtol=1e-3)
    # the recorded scale is what conv1's output channels were divided by
    s = np.asarray(rec["pairs"][0]["scale"])
    np.testing.assert_allclose(w["b1"], g.initializers["b1"] / s, rtol=1e-5)
    assert not res.recipe.equalizations  # folded into the weights: no run-time multiply


def test_cle_cuts_the_per_tensor_weight_error_on_imbalanced_channels():
    g, x = cnn(), images(2)
    plain = sim_err(quantize_cnn(g, ["none"], W4_TENSOR), g, x)
    cle = sim_err(quantize_cnn(g, [("cle", {"absorb": False})], W4_TENSOR), g, x)
    assert cle < 0.6 * plain, (plain, cle)


def test_high_bias_absorption_keeps_outputs_and_shrinks_the_range():
    """Absorption is exact where the second layer does not zero-pad, except for inputs whose
    pre-activation falls below c (rare at 3 std); with zero padding the border outputs of the
    second layer shift (its padded taps see 0, not c) while the interior ones stay."""
    for pad in (0, 1):
        side = 4 if pad else 6
        x, xt = images(1, side=side), images(3, side=side)
        g = cnn(dw_pad=pad, bias=4.0)
        off = quantize_cnn(g, [("cle", {"absorb": False})], x=x)
        on = quantize_cnn(g, [("cle", {"absorb": True})], x=x)
        absorbed = on.recipe.provenance["cle"]["absorbed"]
        assert absorbed["conv1->dw"]["padded"] is bool(pad)
        assert max(absorbed["conv1->dw"]["c"]) > 0
        outs = ["a1", "c2"]
        a_off = run_graph(
            g, {"x": xt}, weights={**g.initializers, **off.recipe.weights}, outputs=outs
        )
        a_on = run_graph(
            g, {"x": xt}, weights={**g.initializers, **on.recipe.weights}, outputs=outs
        )
        # dw's own output moved down by its c (absorbed into pw): add it back
        c2 = a_on["c2"] + np.asarray(absorbed["dw->pw"]["c"], np.float32)[:, None, None]
        n = c2.shape[-1]
        inner = (slice(None), slice(None), slice(pad, n - pad), slice(pad, n - pad))
        assert rel_err(c2[inner], a_off["c2"][inner]) < 1e-2, pad
        if pad:  # the border moves by the padded taps' share of W2 c
            assert rel_err(c2, a_off["c2"]) > 0.01
        # the activation range after the ReLU shrinks by c
        assert a_on["a1"].max() < 0.85 * a_off["a1"].max()


def test_exact_only_skips_padded_layers_with_a_warning():
    res = quantize_cnn(cnn(bias=4.0), [("cle", {"exact_only": True})])
    assert "conv1->dw" not in res.recipe.provenance["cle"]["absorbed"]
    assert any("zero-pads" in w for w in res.recipe.provenance["warnings"])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"iters": 0}, "iters"),
        ({"tol": 2}, "tol"),
        ({"absorb": "yes"}, "absorb"),
        ({"n_std": -1}, "n_std"),
        ({"exact_only": 1}, "exact_only"),
    ],
)
def test_cle_rejects_bad_options(options, match):
    with pytest.raises(ValueError, match=f"cle: {match}"):
        quantize_cnn(cnn(), [("cle", options)])


def test_absorption_without_calibration_data_is_an_error():
    with pytest.raises(ValueError, match="absorb=True needs calibration data"):
        quantfw.quantize(
            cnn(), target="generic", algorithms=[("cle", {"absorb": True})],
            overrides={"dynamic": True},
        )  # fmt: skip


def test_a_model_without_chains_is_left_alone_with_a_warning():
    rng = np.random.default_rng(0)
    g = QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w"})],
        ["x"], ["y"], {"w": rng.normal(size=(3, 4)).astype(np.float32)},
    )  # fmt: skip
    res = quantfw.quantize(g, rng.normal(size=(8, 4)).astype(np.float32), algorithms=["cle"])
    assert not res.recipe.weights
    assert any("no chain" in w for w in res.recipe.provenance["warnings"])


# -- bias correction -----------------------------------------------------------------------------
LAYERS = {"conv1": "c1", "dw": "c2", "pw": "c3", "fc": "y"}


def layer_stats(res, graph, x, float_weights):
    """Per layer: (float outputs, quantized-model outputs) over ``x``, channels last; the float
    model has ``float_weights`` (the cle rewrites) in place of the graph's."""
    fl = run_graph(graph, {"x": x}, weights={**graph.initializers, **float_weights},
                   outputs=list(LAYERS.values()))  # fmt: skip
    (q,) = GraphFrontend().collect(
        None, graph, list(LAYERS.values()), [{"x": x}], recipe=res.recipe
    )

    def flat(v):
        v = np.moveaxis(v, 1, -1) if v.ndim == 4 else v
        return v.reshape(-1, v.shape[-1]).astype(np.float64)

    return {k: (flat(fl[t]), flat(q[t])) for k, t in LAYERS.items()}


def test_bias_correction_zeroes_the_mean_error_per_channel():
    g, x = cnn(), images(1)
    plain = quantize_cnn(g, [("cle", {"absorb": False})], W4_TENSOR)
    fixed = quantize_cnn(g, [("cle", {"absorb": False}), "bias_correction"], W4_TENSOR)
    assert set(fixed.recipe.provenance["bias_correction"]["layers"]) == set(LAYERS)
    fw = plain.recipe.weights  # the float rewrites of cle only
    before, after = layer_stats(plain, g, x, fw), layer_stats(fixed, g, x, fw)
    for name in LAYERS:
        f, q = after[name]
        # what remains is the rounding of the corrected bias to its int32 grid (half a step)
        step = fixed.recipe.tensors[g.node(name).weights["bias"]].params.scale
        shift = np.abs((f - q).mean(axis=0))
        assert np.all(shift <= 0.5 * step * 1.01 + 1e-6), (name, shift, step)
        f0, q0 = before[name]
        assert np.abs((f0 - q0).mean(axis=0)).max() > 2 * shift.max()
    # the int32 bias parameters are the same (s_input * s_weight) and the codes fit
    for b in ("b1", "bd", "b3", "b4"):
        t = fixed.recipe.tensors[b]
        assert t.params == plain.recipe.tensors[b].params
        assert np.abs(fixed.recipe.weights[b] / t.params.scale).max() < 2**31 - 1
    # and it does not hurt on held-out data
    xt = images(9)
    assert sim_err(fixed, g, xt) <= 1.02 * sim_err(plain, g, xt)


def test_bias_correction_warns_about_a_layer_without_bias():
    g = cnn()
    inits = {k: v for k, v in g.initializers.items() if k != "b4"}
    nodes = [
        Node(n.name, n.op, n.inputs, n.outputs, weights={"weight": "w4"}, attrs=n.attrs)
        if n.name == "fc" else n
        for n in g.nodes
    ]  # fmt: skip
    g2 = QuantGraph(nodes, g.inputs, g.outputs, inits, name="cnn")
    res = quantize_cnn(g2, ["none", "bias_correction"])
    assert "fc" not in res.recipe.provenance["bias_correction"]["layers"]
    assert any("'fc'" in w and "no bias" in w for w in res.recipe.provenance["warnings"])


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("bias_correction", {"nodes": "conv1"}, "nodes must be a list"),
        ("bn_reestimate", {"max_factor": 0.5}, "max_factor"),
        ("bn_reestimate", {"nodes": ["nope"]}, r"nodes \['nope'\]"),
    ],
)
def test_corrections_reject_bad_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        quantize_cnn(cnn(), ["none", (name, options)])


def test_corrections_need_calibration_data():
    with pytest.raises(ValueError, match="bias_correction: needs calibration data"):
        quantfw.quantize(
            cnn(), target="generic", algorithms=["none", "bias_correction"],
            overrides={"dynamic": True},
        )  # fmt: skip


# -- BN re-estimation ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, exact", [(W4_CHANNEL, True), (W4_TENSOR, False)])
def test_bn_reestimate_matches_the_float_mean_and_std(overrides, exact):
    g, x = cnn(), images(1)
    plain = quantize_cnn(g, [("cle", {"absorb": False})], overrides)
    res = quantize_cnn(g, [("cle", {"absorb": False}), "bn_reestimate"], overrides)
    layers = res.recipe.provenance["bn_reestimate"]["layers"]
    assert {v["exact"] for v in layers.values()} == {exact}
    fw = plain.recipe.weights  # the float rewrites of cle only
    before, after = layer_stats(plain, g, x, fw), layer_stats(res, g, x, fw)
    gaps, gaps0 = [], []
    for name in LAYERS:
        f, q = after[name]
        sf, sq = f.std(axis=0), q.std(axis=0)
        # the means match up to the rounding of the new bias to its int32 grid
        step = res.recipe.tensors[g.node(name).weights["bias"]].params.scale
        assert np.all(np.abs(f.mean(axis=0) - q.mean(axis=0)) <= 0.5 * step * 1.01 + 1e-6), name
        f0, q0 = before[name]
        gaps0.append(np.abs(q0.std(axis=0) / f0.std(axis=0) - 1).mean())
        gaps.append(np.abs(sq / sf - 1).mean())
        if exact:  # per-channel scales: the standard deviations match
            assert np.abs(sq / sf - 1).max() < 1e-5, name
    # per-tensor: the weight is rounded again on the same grid: closer, not equal
    assert sum(gaps) < 0.8 * sum(gaps0), (gaps, gaps0)
    if exact:  # the codes are kept: only the per-channel weight scales changed
        for w in ("w1", "wd", "w3", "w4"):
            old, new = plain.recipe.tensors[w], res.recipe.tensors[w]
            np.testing.assert_array_equal(
                quantize(plain.recipe.weights.get(w, g.initializers[w]), old.params, old.spec),
                quantize(res.recipe.weights[w], new.params, new.spec),
            )
            b = res.recipe.tensors[w.replace("w", "b")]
            x_scale = res.recipe.tensors[g.node(res.recipe.tensors[w].node).inputs[0]]
            np.testing.assert_allclose(
                b.params.scale, x_scale.params.scale * new.params.scale, rtol=1e-6
            )


# -- the documented example -------------------------------------------------------------------------
def test_the_documented_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})


# -- weight layouts --------------------------------------------------------------------------------
def test_grouped_conv_layout_against_the_interpreter():
    """Scaling input channel i of a grouped conv's weight by s_i computes what the conv of the
    input scaled per channel computes; in_sums is the response to a constant input (no
    padding); the ranges per input channel are the maxima over the group's filters."""
    from quantfw.interpreter import layer_output

    rng = np.random.default_rng(0)
    node = Node("g", "conv", ["x"], ["y"], weights={"weight": "w"}, attrs={"groups": 4})
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)  # 12 input channels, 4 groups
    lay = weight_layout(node, w)
    assert (lay.out_channels(w), lay.in_channels(w)) == (8, 12)
    s = rng.uniform(0.5, 2.0, size=12)
    x = rng.normal(size=(2, 12, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(
        layer_output(node, x, lay.scale_in(w, s).astype(np.float32), None),
        layer_output(node, (x * s[:, None, None]).astype(np.float32), w, None),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    v = rng.normal(size=12)
    const = np.broadcast_to(v[None, :, None, None], (1, 12, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(
        layer_output(node, const, w, None)[0, :, 0, 0], lay.in_sums(w, v), rtol=1e-4, atol=1e-4
    )
    r = lay.in_absmax(w)
    assert r[5] == np.abs(w[2:4, 2]).max()  # input 5 = group 1 (outputs 2, 3), index 2
    lin = Node("l", "linear", ["x"], ["y"], weights={"weight": "w"}, attrs={"channel_axis": 1})
    wl = rng.normal(size=(5, 3)).astype(np.float32)  # (in, out), ONNX MatMul
    ll = weight_layout(lin, wl)
    np.testing.assert_allclose(ll.out_absmax(wl), np.abs(wl).max(axis=0))
    np.testing.assert_allclose(ll.in_absmax(wl), np.abs(wl).max(axis=1))


def test_a_relu6_between_layers_is_reported():
    g = cnn()
    nodes = [Node(n.name, "clip", n.inputs, n.outputs, attrs={"clip": (0.0, 6.0)})
             if n.name == "relu1" else n for n in g.nodes]  # fmt: skip
    res = quantize_cnn(QuantGraph(nodes, g.inputs, g.outputs, g.initializers), ["cle"])
    assert [p["first"] for p in res.recipe.provenance["cle"]["pairs"]] == ["dw"]
    assert any("clip (ReLU6)" in w and "conv1" in w for w in res.recipe.provenance["warnings"])


def test_the_records_survive_a_recipe_round_trip(tmp_path):
    from quantfw.recipe import Recipe

    res = quantize_cnn(cnn(bias=4.0), ["cle", "bn_reestimate", "bias_correction"], W4_CHANNEL)
    res.recipe.save(tmp_path / "r")
    back = Recipe.load(tmp_path / "r")
    assert back == res.recipe
    assert {"cle", "bn_reestimate", "bias_correction"} <= set(back.provenance)
