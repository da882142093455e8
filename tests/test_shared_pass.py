"""minmax calibration reads the extremes SmoothQuant's float pass gathered: one pass, same recipe."""

import numpy as np
import pytest
from test_smoothquant import _outlier_model, _Target

import quantfw
from quantfw.algorithms.calibrate import ObserverCalibration
from quantfw.api import AlgorithmInfo, Stage
from quantfw.api.channel_ranges import ChannelRanges
from quantfw.numerics import equalization_multiplier, equalize
from quantfw.observers import MinMaxObserver
from quantfw.spec import QuantSpec

SPEC = QuantSpec("uint8", symmetric=False)


def _batches(rng, c=24):
    x = rng.normal(size=(40, 7, c)).astype(np.float32)
    x[..., 5] *= 60.0
    return [x[:13], x[13:14], x[14:40], np.zeros((0, 7, c), np.float32)]


def _observed(batches, scale=None):
    obs = MinMaxObserver(SPEC)
    for b in batches:
        obs.update(b if scale is None else equalize(b, scale))
    return obs.compute_range()


def _from_ranges(r, name, mult=None):
    obs = MinMaxObserver(SPEC)
    obs.update(np.stack(r.extrema(name, mult)))
    return obs.compute_range()


def test_extremes_give_the_observer_range_bit_for_bit():
    rng = np.random.default_rng(0)
    batches = _batches(rng)
    scale = rng.uniform(0.01, 50.0, size=24).astype(np.float32)
    r = ChannelRanges(["x"])
    for b in batches:
        r.update({"x": b, "other": b})
    assert r.extrema("x") is None  # the pass is not complete yet
    r.complete = True
    assert r.shapes["x"] == (0, 7, 24)  # the last batch's, as the observer loop records it
    for got, want in zip(_from_ranges(r, "x"), _observed(batches), strict=True):
        assert got.tobytes() == want.tobytes()
    mult = equalization_multiplier(scale)
    for got, want in zip(_from_ranges(r, "x", mult), _observed(batches, scale), strict=True):
        assert got.tobytes() == want.tobytes()


def test_what_the_extremes_cannot_serve():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    r = ChannelRanges(["varying", "ints", "nan", "empty"])
    r.update({"varying": a, "ints": np.arange(6), "nan": np.array([1.0, np.nan], np.float32)})
    r.update({"varying": b, "empty": np.zeros((0, 3), np.float32)})
    r.complete = True
    # the last axis changed length: the global range is still exact, per channel it is gone
    lo, hi = r.extrema("varying")
    assert lo.item() == min(a.min(), b.min()) and hi.item() == max(a.max(), b.max())
    assert r.extrema("varying", np.ones(6, np.float32)) is None
    assert r.extrema("ints") is None  # observers widen integers: left to their own pass
    assert r.extrema("nan") is None  # the observer's own pass names the bad values
    assert r.extrema("empty") is None  # nothing seen: the observer says so
    r2 = ChannelRanges(["x"])
    r2.update({"x": a})
    r2.complete = True
    assert r2.extrema("x", np.ones(5, np.float32)) is None  # wrong channel count
    assert r2.extrema("x", -np.ones(8, np.float32)) is None  # not a positive multiplier


class _CountingFrontend:
    """Counts the float passes (frontend.collect calls) of one quantization."""

    def __init__(self, monkeypatch):
        from quantfw.graph_frontend import GraphFrontend

        self.calls: list[list[str]] = []
        real = GraphFrontend.collect

        def collect(fe, model, graph, tensors, batches, **kw):
            self.calls.append(list(tensors))
            return real(fe, model, graph, tensors, batches, **kw)

        monkeypatch.setattr(GraphFrontend, "collect", collect)


def _same_recipe(a, b):
    assert set(a.tensors) == set(b.tensors)
    for name, t in a.tensors.items():
        u = b.tensors[name]
        assert t.shape == u.shape, name
        if t.params is None:
            assert u.params is None
            continue
        assert t.params.scale.tobytes() == u.params.scale.tobytes(), name
        assert t.params.zero_point.tobytes() == u.params.zero_point.tobytes(), name
    assert a.equalizations.keys() == b.equalizations.keys()
    for k, eq in a.equalizations.items():
        assert eq.scale.tobytes() == b.equalizations[k].scale.tobytes()
    assert a.weights.keys() == b.weights.keys()
    for k, w in a.weights.items():
        assert w.tobytes() == b.weights[k].tobytes()


@pytest.mark.parametrize("batch_size", [32, 7])
def test_smoothquant_and_minmax_share_one_pass(quantfw_registry_with, monkeypatch, batch_size):
    g, x = _outlier_model(np.random.default_rng(3))
    quantfw_registry_with(_Target())
    count = _CountingFrontend(monkeypatch)
    shared = quantfw.quantize(g, x, target="edges-sq", batch_size=batch_size)
    assert len(count.calls) == 1  # SmoothQuant's pass served the calibration too
    assert shared.recipe.equalizations  # ... with an equalised activation among its ranges
    monkeypatch.setattr(ObserverCalibration, "prepare", lambda self, ctx: None)
    own = quantfw.quantize(g, x, target="edges-sq", batch_size=batch_size)
    assert len(count.calls) == 3  # without the request: a pass of its own
    _same_recipe(shared.recipe, own.recipe)


def test_other_calibrators_and_rewritten_float_weights_run_their_own_pass(
    quantfw_registry_with, monkeypatch
):
    g, x = _outlier_model(np.random.default_rng(4))

    class Rewrite:  # a transform that runs the float model, then changes it
        def run(self, ctx):
            for _ in ctx.collect(["h"]):
                pass
            ctx.set_weight("gamma", ctx.float_weight("gamma") * np.float32(0.5))

    class Plugin:
        @quantfw.hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("rewrite-gamma", Stage.TRANSFORM, Rewrite))

    quantfw_registry_with(_Target(), Plugin())
    count = _CountingFrontend(monkeypatch)
    res = quantfw.quantize(g, x, target="edges-sq", algorithms=["rewrite-gamma"])
    assert len(count.calls) == 2  # the extremes gathered before set_weight no longer hold
    h = quantfw.interpreter.run_graph(g, {"x": x}, outputs=["h"])["h"] * np.float32(0.5)
    assert res.recipe.tensors["h"].params.scale.tobytes() == (
        quantfw.numerics.compute_qparams(
            *_observed([h]), res.recipe.tensors["h"].spec
        ).scale.tobytes()
    )
    count.calls.clear()
    quantfw.quantize(g, x, target="edges-sq", algorithms=["percentile"])
    assert len(count.calls) == 2  # histograms need the values: SmoothQuant's, then its own


def test_smoothquant_stops_sampling_rows_once_it_has_enough(quantfw_registry_with, monkeypatch):
    """Rows searched = the first ``samples`` of those drawn batch by batch, as when every batch
    was drawn from; the draws after that are skipped (nothing reads them)."""
    from quantfw.algorithms.smoothquant import SmoothQuant

    g, x = _outlier_model(np.random.default_rng(5))
    quantfw_registry_with(_Target())
    seen = {}
    real = SmoothQuant._search

    def search(self, ctx, name, sample, *args):
        seen[name] = sample.copy()
        return real(self, ctx, name, sample, *args)

    monkeypatch.setattr(SmoothQuant, "_search", search)
    quantfw.quantize(
        g, x, target="edges-sq", batch_size=7, algorithms=[("smoothquant", {"samples": 20})]
    )
    h = quantfw.interpreter.run_graph(g, {"x": x}, outputs=["h"])["h"]
    rng = np.random.default_rng(0)
    drawn = []
    for i in range(0, len(x), 7):  # the old loop: a draw from every batch
        flat = h[i : i + 7]
        drawn.append(flat[rng.choice(len(flat), min(len(flat), 20), replace=False)])
    assert seen["h"].tobytes() == np.concatenate(drawn)[:20].tobytes()


def test_layout_aliases_share_their_source_extremes():
    from quantfw import Node, QuantGraph
    from quantfw.algorithms.calibrate import _value_aliases

    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 4, 6)).astype(np.float32)
    t = x.transpose(0, 2, 1).reshape(5, -1)
    r = ChannelRanges(["x", "t"], aliases={"t": "x"})
    r.update({"x": x, "t": t})
    r.complete = True
    assert r.shapes["t"] == (5, 24)
    for got, want in zip(_from_ranges(r, "t"), _observed([t]), strict=True):
        assert got.tobytes() == want.tobytes()
    assert r.extrema("t", np.ones(24, np.float32)) is None  # its own channels were not kept

    g = QuantGraph(
        [
            Node("lin", "linear", ["a"], ["b"], weights={"weight": "w"}),
            Node("tr", "transpose", ["b"], ["c"], attrs={"perm": (1, 0)}),
            Node("re", "reshape", ["c"], ["d"], attrs={"shape": (-1,)}),
            Node("sm", "softmax", ["d"], ["e"]),
            Node("re2", "reshape", ["e"], ["f"], attrs={"shape": (-1,)}),
        ],
        ["a"],
        ["f"],
        {"w": np.ones((3, 3), np.float32)},
    )
    assert _value_aliases(g, ["b", "c", "d", "e", "f"]) == {"c": "b", "d": "b", "f": "e"}
    assert _value_aliases(g, ["b", "d"]) == {}  # "c" not watched: the chain is not followed
