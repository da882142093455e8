"""The ``onnx`` frontend: loading (and refusing bad files), collect, simulate, external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX frontend tests need onnx installed")
pytest.importorskip("onnxruntime", reason="the ONNX frontend tests need onnxruntime installed")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from quantfw_onnx.frontend import OnnxFrontend  # noqa: E402
from quantfw_onnx.loader import SHELL_BYTES, is_prepared, load_onnx  # noqa: E402
from quantfw_onnx.runner import OrtSession  # noqa: E402

from quantfw.interpreter import run_graph  # noqa: E402
from quantfw.simulate import reference_runner  # noqa: E402


@pytest.fixture
def fe():
    return OnnxFrontend()


def save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# ------------------------------------------------------------------------------------------------
# accepts / load / capture
# ------------------------------------------------------------------------------------------------


def test_accepts_without_reading(fe, kit, tmp_path):
    assert fe.name == "onnx"
    assert fe.accepts(kit.build_cnn())
    assert fe.accepts(str(tmp_path / "missing.onnx"))  # not read: it does not even exist
    assert fe.accepts(tmp_path / "Model.ONNX")
    assert not fe.accepts(tmp_path / "model.tflite")
    assert not fe.accepts(object())


def test_the_plugin_registers_the_frontend(tmp_path):
    from quantfw.plugins import get_registry

    info = get_registry().frontend_for(tmp_path / "m.onnx")
    assert info.name == "onnx" and ".onnx" in info.suffixes
    assert isinstance(info.factory(), OnnxFrontend)


def test_load_prepares_in_place_and_capture_takes_a_path(fe, kit, tmp_path):
    path = save(kit.build_cnn(), tmp_path / "cnn.onnx")
    model = fe.load(path)
    assert is_prepared(model)
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]
    graph = fe.capture(path)
    assert graph.name == "cnn" and graph.forms["onnx"] is not None
    graph2 = fe.capture(model)
    assert graph2.forms["onnx"] is model  # already prepared: no copy


def test_capture_leaves_the_callers_model_alone(fe, kit):
    model = kit.build_cnn()
    before = model.SerializeToString()
    graph = fe.capture(model)
    assert model.SerializeToString() == before
    assert graph.forms["onnx"] is not model and is_prepared(graph.forms["onnx"])
    # nothing is remembered between captures: each prepares its own copy
    assert fe.capture(model).forms["onnx"] is not graph.forms["onnx"]


def test_copy_model_false_prepares_the_model_in_place(kit):
    model = kit.build_cnn()
    graph = OnnxFrontend(copy_model=False).capture(model)
    assert graph.forms["onnx"] is model and is_prepared(model)
    assert "BatchNormalization" not in [n.op_type for n in model.graph.node]


# ------------------------------------------------------------------------------------------------
# collect
# ------------------------------------------------------------------------------------------------


def test_collect_gives_what_onnxruntime_gives(fe, kit):
    graph = fe.capture(kit.build_cnn())
    names = ["input", "r1", "res", "c3", "cat", "logits"]
    batches = [kit.cnn_batch(n, seed=s) for s, n in enumerate((2, 3, 1))]
    reference = kit.with_outputs(graph.forms["onnx"], names)
    results = list(fe.collect(graph.forms["onnx"], graph, names, batches))
    assert len(results) == 3
    for batch, got in zip(batches, results, strict=True):
        assert list(got) == names
        want = kit.ort_run(reference, batch, outputs=[n for n in names if n != "input"])
        np.testing.assert_array_equal(got["input"], batch["input"])
        for k, v in want.items():
            assert got[k].shape == v.shape and got[k].dtype == v.dtype
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_collect_holds_one_batch_at_a_time(kit):
    fe = OnnxFrontend(threads=1)
    graph = fe.capture(kit.build_cnn())
    produced = []

    def batches():
        for s in range(3):
            produced.append(s)
            yield kit.cnn_batch(2, seed=s)

    seen = []
    for out in fe.collect(None, graph, ["res"], batches()):
        seen.append(len(produced))
        assert out["res"].shape == (2, 8, 8, 8)
    assert seen == [1, 2, 3]  # each result comes before the next batch is drawn


def test_collect_unknown_tensors_raise_keyerror_at_once(fe, kit):
    graph = fe.capture(kit.build_cnn())
    with pytest.raises(KeyError, match="nope.*also_nope|also_nope.*nope"):
        fe.collect(None, graph, ["res", "nope", "also_nope"], [kit.cnn_batch()])


def test_collect_uses_rewritten_weights(fe, kit):
    graph = fe.capture(kit.build_cnn())
    batch = kit.cnn_batch(2)
    (before,) = fe.collect(None, graph, ["c3"], [batch])
    rewritten = {"conv3.weight": np.zeros((4, 8, 1, 1), np.float32)}  # as ctx.set_weight keeps
    (after,) = fe.collect(None, graph, ["c3"], [batch], weights=rewritten)
    bias = graph.initializers["conv3.bias"]
    assert np.abs(before["c3"] - bias.reshape(1, -1, 1, 1)).max() > 0.1
    np.testing.assert_allclose(
        after["c3"], np.broadcast_to(bias.reshape(1, -1, 1, 1), (2, 4, 8, 8))
    )
    # the model itself still has the original weight
    proto = next(t for t in graph.forms["onnx"].graph.initializer if t.name == "conv3.weight")
    assert np.abs(numpy_helper.to_array(proto)).max() > 0


def test_collect_casts_float_inputs_to_the_declared_type(fe, kit):
    graph = fe.capture(kit.build_transformer())
    batch = kit.transformer_batch(2)
    (want,) = fe.collect(None, graph, ["y", "mask"], [batch])
    as_floats = {"ids": batch["ids"].astype(np.float64), "mask": batch["mask"].astype(np.float64)}
    (got,) = fe.collect(None, graph, ["y", "mask"], [as_floats])
    assert got["mask"].dtype == np.float32
    np.testing.assert_array_equal(got["y"], want["y"])
    with pytest.raises(ValueError, match="ids"):
        list(fe.collect(None, graph, ["y"], [{**batch, "ids": batch["ids"] + 0.5}]))
    with pytest.raises(ValueError, match="missing input.*mask"):
        list(fe.collect(None, graph, ["y"], [{"ids": batch["ids"]}]))


def test_big_initializers_are_lent_to_onnxruntime_not_serialized(kit):
    """Weights above SHELL_BYTES reach ONNX Runtime as arrays, not inside the serialized graph."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((96, 96)).astype(np.float32)
    assert w.nbytes > SHELL_BYTES
    model = kit.make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 96])],
        {"w": w},
    )
    session = OrtSession(model)
    assert session.lent == ["w"]
    x = rng.standard_normal((3, 96)).astype(np.float32)
    np.testing.assert_allclose(session.run({"x": x})["y"], x @ w, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# external data
# ------------------------------------------------------------------------------------------------


def save_external(model, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def test_external_data_loads_from_the_model_folder(fe, kit, tmp_path, monkeypatch):
    model = kit.build_cnn()
    path = save_external(kit.build_cnn(), tmp_path / "ext")  # (onnx.save rewrites its argument)
    assert (tmp_path / "ext" / "weights.bin").stat().st_size > 0
    monkeypatch.chdir(tmp_path)  # side files are found next to the model, not in the cwd
    loaded = load_onnx(path)
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    graph = fe.capture(path)
    batch = kit.cnn_batch(2)
    want = kit.ort_run(model, batch)["logits"]
    np.testing.assert_allclose(run_graph(graph, batch)["logits"], want, rtol=1e-5, atol=1e-5)
    (got,) = fe.collect(None, graph, ["logits"], [batch])
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)


def test_external_data_missing_or_short(kit, tmp_path):
    path = save_external(kit.build_cnn(), tmp_path / "ext")
    side = tmp_path / "ext" / "weights.bin"
    data = side.read_bytes()
    side.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.onnx.*weights\.bin"):
        load_onnx(path)
    side.unlink()
    with pytest.raises(ValueError, match=r"model\.onnx.*weights\.bin.*missing"):
        load_onnx(path)


def test_external_data_may_be_a_symlink_but_not_outside_the_folder(kit, tmp_path):
    path = save_external(kit.build_cnn(), tmp_path / "ext")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (tmp_path / "ext" / "weights.bin").rename(blobs / "0123abcd")
    (tmp_path / "ext" / "weights.bin").symlink_to(blobs / "0123abcd")  # a hub cache's layout
    assert len(load_onnx(path).graph.initializer) == 15
    bare = onnx.load(str(path), load_external_data=False)
    for t in bare.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../blobs/0123abcd"
    save(bare, tmp_path / "ext" / "escape.onnx")
    with pytest.raises(ValueError, match="outside the model's folder"):
        load_onnx(tmp_path / "ext" / "escape.onnx")


# ------------------------------------------------------------------------------------------------
# bad files
# ------------------------------------------------------------------------------------------------


def _bad_file(kind: str, folder: Path, kit) -> Path:
    path = folder / f"{kind}.onnx"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = kit.build_cnn().SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("This is a README, renamed to .onnx by mistake.\nNothing to see.\n")
    elif kind == "checker":
        graph = helper.make_graph(
            [helper.make_node("NoSuchOp", ["x"], ["y"], name="bad")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
        path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("truncated", "not .*ONNX|truncated"),
        ("random", "not .*ONNX|truncated"),
        ("text", "not .*ONNX|truncated"),
        ("checker", "checker.*NoSuchOp"),
    ],
)
def test_bad_files_give_valueerror_naming_the_file(fe, kit, tmp_path, kind, why):
    path = _bad_file(kind, tmp_path, kit)
    with pytest.raises(ValueError, match=why) as info:
        fe.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=why):
        fe.capture(str(path))


def test_load_rejects_unloaded_external_data(kit, tmp_path):
    path = save_external(kit.build_cnn(), tmp_path / "ext")
    bare = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ValueError, match="external data"):
        load_onnx(bare)
    with pytest.raises(ValueError, match="external data"):
        OnnxFrontend().capture(bare)


# ------------------------------------------------------------------------------------------------
# simulate
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("which", "target"), [("cnn", "generic"), ("transformer", "x86-vnni")])
def test_simulate_is_the_reference_fake_quantization(kit, tmp_path, which, target):
    import quantfw

    build, batch = (
        (kit.build_cnn, kit.cnn_batch)
        if which == "cnn"
        else (kit.build_transformer, kit.transformer_batch)
    )
    path = save(build(), tmp_path / f"{which}.onnx")
    result = quantfw.quantize(path, [batch(4, seed=s) for s in range(3)], target=target)
    assert result.recipe.provenance["frontend"] == "onnx"
    simulate = result.simulate()
    ops = {n.op_type for n in simulate.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    feeds = batch(3, seed=9)
    got = simulate(feeds)
    graph, recipe = result.graph, result.recipe
    want = reference_runner(graph, recipe)(feeds)
    floats = run_graph(graph, feeds)
    for k in graph.outputs:
        scale = float(np.abs(want[k]).max())
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-5 * scale, err_msg=k)
        assert np.abs(floats[k] - want[k]).max() > 1e-4 * scale  # it did quantize
