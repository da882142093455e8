"""Fuzzing ONNX model files through the ONNX frontend, as the CLI reads them: ``load`` (parse,
external data, checker, preparation), ``capture`` and every initializer's value (the harness and
its rule: ``tests/fuzzing.py``).

Inputs start from the test models (the CNN, the MLP, the CNN with its weights in a side file) and
are mutated structure-aware (opsets, IR versions, op types, cycles, dangling and duplicate names,
initializer types, dims, data and external-data locations, attributes, declared input dims) and
byte-wise.  The default lane runs :data:`EXAMPLES` derandomized examples; the ``slow`` lane runs
for this loader's share of ``QUANTFW_FUZZ_SECONDS``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

onnx = pytest.importorskip("onnx")

from fuzzing import (  # noqa: E402
    TOTAL_LOADERS,
    Case,
    FuzzRun,
    long_seconds,
    mutate_bytes,
    run_for,
    run_isolated,
    short_settings,
)
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto  # noqa: E402
from onnx_test_models import mlp_model  # noqa: E402

from quantfw.errors import QuantfwError  # noqa: E402

#: Examples in the default lane.
EXAMPLES = 80
MODEL = "model.onnx"
SIDE = "model.onnx.data"

_OP_TYPES = ["Conv", "MatMul", "Gemm", "Relu", "Add", "Reshape", "BatchNormalization", "Softmax",
             "Transpose", "Concat", "If", "Loop", "NoSuchOp", "", "Identity", "Flatten"]  # fmt: skip
_DIMS = [[10**12], [2**31, 2**31], [2**62], [0], [], [3, 0, 5], [1] * 9, [7]]
_LOCATIONS = ["../outside.bin", "/etc/passwd", "missing.bin", SIDE, "", ".", "sub/../x"]


def _seeds(tmp: Path, build_cnn: Any) -> list[dict[str, bytes]]:
    """The CNN and the MLP of the tests, and the CNN with every weight in ``model.onnx.data``."""
    from onnx.external_data_helper import convert_model_to_external_data

    out = [{MODEL: m.SerializeToString()} for m in (build_cnn(), mlp_model())]
    ext = build_cnn()
    convert_model_to_external_data(
        ext, all_tensors_to_one_file=True, location=SIDE, size_threshold=0
    )
    onnx.save(ext, str(tmp / MODEL))  # writes the side file next to it
    out.append({MODEL: (tmp / MODEL).read_bytes(), SIDE: (tmp / SIDE).read_bytes()})
    return out


def _mutate_model(draw: Any, m: onnx.ModelProto) -> None:
    g = m.graph
    op = draw(
        st.sampled_from(
            ["opset", "ir", "op_type", "cycle", "dangling", "dup", "init_dtype", "init_dims",
             "init_data", "external", "attr", "io_dims", "drop", "delete_node"]
        )
    )  # fmt: skip
    nodes, inits = list(g.node), list(g.initializer)
    node = nodes[draw(st.integers(0, len(nodes) - 1))] if nodes else None
    init = inits[draw(st.integers(0, len(inits) - 1))] if inits else None
    if op == "opset":
        choice = draw(st.sampled_from(["version", "remove", "domain"]))
        if choice == "remove":
            del m.opset_import[:]
        elif choice == "domain":
            m.opset_import.add(domain=draw(st.sampled_from(["com.x", "ai.onnx.ml", ""])), version=1)
        elif m.opset_import:
            m.opset_import[0].version = draw(st.sampled_from([0, 1, 6, 11, 13, 21, 99, 2**31]))
    elif op == "ir":
        m.ir_version = draw(st.sampled_from([0, 1, 3, 4, 7, 10, 99]))
    elif op == "op_type" and node is not None:
        node.op_type = draw(st.sampled_from(_OP_TYPES))
        if draw(st.booleans()):
            node.domain = draw(st.sampled_from(["com.microsoft", "x", "ai.onnx"]))
    elif op == "cycle" and node is not None and node.input:
        later = nodes[draw(st.integers(nodes.index(node), len(nodes) - 1))]
        node.input[draw(st.integers(0, len(node.input) - 1))] = later.output[0]
    elif op == "dangling" and node is not None and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(
            st.sampled_from(["nowhere", "", g.input[0].name if g.input else "x"])
        )
    elif op == "dup" and node is not None and len(nodes) > 1:
        other = nodes[draw(st.integers(0, len(nodes) - 1))]
        if draw(st.booleans()):
            node.name = other.name
        else:
            node.output[0] = other.output[0]
    elif op == "init_dtype" and init is not None:
        init.data_type = draw(st.integers(0, 30))
    elif op == "init_dims" and init is not None:
        del init.dims[:]
        init.dims.extend(draw(st.sampled_from(_DIMS)))
    elif op == "init_data" and init is not None:
        how = draw(st.sampled_from(["truncate", "clear", "float_data", "int64_data", "string"]))
        if how == "truncate":
            init.raw_data = init.raw_data[: len(init.raw_data) // 2]
        elif how == "clear":
            init.ClearField("raw_data")
        elif how == "float_data":
            init.ClearField("raw_data")
            init.float_data.extend([1.0, float("nan")])
        elif how == "int64_data":
            init.int64_data.extend([2**40])
        else:
            init.string_data.append(b"abc")
    elif op == "external" and init is not None:
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        init.external_data.add(key="location", value=draw(st.sampled_from(_LOCATIONS)))
        for key in draw(st.lists(st.sampled_from(["offset", "length"]), max_size=2, unique=True)):
            value = draw(st.sampled_from(["0", "-5", "4", "99999999999", "abc", "1.5"]))
            init.external_data.add(key=key, value=value)
    elif op == "attr" and node is not None and node.attribute:
        a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        how = draw(st.sampled_from(["ints", "int", "float", "remove", "type"]))
        if how == "ints":
            del a.ints[:]
            a.ints.extend(draw(st.sampled_from([[], [-1], [2**40], [0, 0, 0, 0, 0, 0, 0, 0, 0]])))
        elif how == "int":
            a.i = draw(st.sampled_from([-(2**62), -1, 0, 2**40]))
        elif how == "float":
            a.f = draw(st.sampled_from([float("nan"), float("inf"), -1.0]))
        elif how == "remove":
            node.attribute.remove(a)
        else:
            a.type = draw(st.integers(0, 14))
    elif op == "io_dims" and g.input:
        vi = g.input[draw(st.integers(0, len(g.input) - 1))]
        t = vi.type.tensor_type
        if draw(st.booleans()) and t.shape.dim:
            t.shape.dim[draw(st.integers(0, len(t.shape.dim) - 1))].dim_value = draw(
                st.sampled_from([2**62, 0, 10**9])
            )
        else:
            t.elem_type = draw(st.integers(0, 30))
    elif op == "drop":
        field = draw(st.sampled_from(["input", "output", "initializer"]))
        items = getattr(g, field)
        if items:
            del items[draw(st.integers(0, len(items) - 1))]
    elif op == "delete_node" and node is not None:
        g.node.remove(node)


def onnx_cases(seeds: list[dict[str, bytes]]) -> st.SearchStrategy[Case]:
    @st.composite
    def cases(draw: Any) -> Case:
        files = dict(draw(st.sampled_from(seeds)))
        m = onnx.ModelProto()
        m.ParseFromString(files[MODEL])
        if draw(st.integers(0, 3)):
            for _ in range(draw(st.integers(1, 3))):
                _mutate_model(draw, m)
            files[MODEL] = m.SerializeToString()
        if draw(st.integers(0, 3)) == 0:
            target = draw(st.sampled_from(sorted(files)))
            files[target] = mutate_bytes(draw, files[target], splice_from=files[MODEL])
        return Case(files)

    return cases()


def _load_and_capture(folder: Path) -> None:
    """What ``quantfw quantize model.onnx`` does with the file before calibrating."""
    from quantfw_onnx.frontend import OnnxFrontend

    fe = OnnxFrontend()
    graph = fe.capture(fe.load(folder / MODEL))
    for name in graph.initializers:
        graph.initializers[name]  # noqa: B018 - every value, as the planner and algorithms read


def _body(run: FuzzRun):
    def check(case: Case) -> None:
        folder = Path(tempfile.mkdtemp(prefix="fuzz-onnx-"))
        try:
            for rel, raw in case.items():
                (folder / rel).write_bytes(raw)
            outcome = run_isolated(lambda: _load_and_capture(folder), (ValueError, QuantfwError))
            run.check("onnx", outcome, [MODEL], repr(case))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return check


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, kit):
    pytest.importorskip("onnxruntime")
    import quantfw_onnx.frontend  # noqa: F401 - imported before the workers fork

    return _seeds(tmp_path_factory.mktemp("onnx-seeds"), kit.build_cnn)


def test_seeds_load_cleanly(seeds):
    run = FuzzRun(strict=True)
    for case in seeds:
        _body(run)(Case(case))
    assert run.outcomes == {"onnx": {"loaded": len(seeds)}}


def test_fuzz_onnx_frontend(seeds):
    run = FuzzRun(strict=True)
    short_settings(EXAMPLES)(given(onnx_cases(seeds))(_body(run)))()
    assert run.tried["onnx"] >= EXAMPLES // 2
    assert run.outcomes["onnx"].get("loaded", 0) > 0  # mutants get past the first check too


def test_non_utf8_text_is_a_user_error(tmp_path, seeds):
    """Found by the slow lane: an external-data location or a tensor name that is not UTF-8
    came back from protobuf as bytes (TypeError in ``Path()`` / in prepare); now a ValueError
    naming the file."""
    from quantfw_onnx.frontend import OnnxFrontend

    m = onnx.ModelProto()
    m.ParseFromString(seeds[2][MODEL])
    m.graph.initializer[0].external_data[0].value = "side.bin"
    (tmp_path / MODEL).write_bytes(m.SerializeToString().replace(b"side.bin", b"sid\xff.bin"))
    with pytest.raises(ValueError, match=r"model\.onnx.*not UTF-8"):
        OnnxFrontend().load(tmp_path / MODEL)
    # a tensor name that is not UTF-8 reached name sorting as bytes (TypeError in prepare)
    raw = seeds[1][MODEL].replace(b"fc1.out", b"fc1.\xffut")
    (tmp_path / MODEL).write_bytes(raw)
    with pytest.raises(ValueError, match=r"model\.onnx.*not UTF-8"):
        OnnxFrontend().load(tmp_path / MODEL)


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzz_onnx_frontend_long(seeds):
    run = FuzzRun(strict=False)
    run_for(onnx_cases(seeds), _body(run), long_seconds() / TOTAL_LOADERS)
    print(run.report())
    assert not run.failures, run.report()
