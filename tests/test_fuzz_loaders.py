"""Fuzzing the core's file loaders: target TOML, recipe JSON + safetensors, ``.qgraph``,
calibration ``.npz`` / ``.npy`` folders (the harness and its rule: ``tests/fuzzing.py``).

Every input starts from a real file the project writes and is mutated structure-aware and
byte-wise.  The default lane runs :data:`EXAMPLES` derandomized examples per loader (a few
seconds each); ``pytest -m slow tests/test_fuzz_loaders.py`` runs each loader for its share of
``QUANTFW_FUZZ_SECONDS`` (default 600 s over the five loaders, the ONNX one included) and
reports every distinct failure.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzing import (
    TOTAL_LOADERS,
    Case,
    FuzzRun,
    dump_json,
    dump_toml,
    long_seconds,
    mutate_bytes,
    mutate_tree,
    npy_bytes,
    npy_file,
    odd_array,
    run_for,
    run_isolated,
    short_settings,
    zip_bytes,
)
from hypothesis import given
from hypothesis import strategies as st

from quantfw.calibration import CalibrationData, CalibrationError, CalibrationFile
from quantfw.graph import Node, QuantGraph
from quantfw.graph_io import load_graph, save_graph
from quantfw.recipe import Equalization, Recipe, RecipeError
from quantfw.target import TargetSpecError, builtin_target_paths, load_target
from quantfw.target.load import tomllib  # tomllib, or tomli on Python 3.10

#: Examples per loader in the default lane.
EXAMPLES = 80

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Fuzzer:
    """One loader under fuzz: how cases are drawn, how the loader is called on a folder, which
    exceptions it documents, and which names its messages may use for the file."""

    name: str
    strategy: st.SearchStrategy[dict[str, bytes]]
    call: Callable[[Path], Any]
    allowed: tuple[type[BaseException], ...]
    names: Callable[[Path], list[str]]

    def body(self, run: FuzzRun) -> Callable[[dict[str, bytes]], None]:
        def check(case: dict[str, bytes]) -> None:
            folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{self.name}-"))
            try:
                for rel, raw in case.items():
                    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    (folder / rel).write_bytes(raw)
                outcome = run_isolated(lambda: self.call(folder), self.allowed)
                run.check(self.name, outcome, self.names(folder), repr(case))
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        return check


def fuzz_short(fuzzer: Fuzzer, examples: int = EXAMPLES) -> FuzzRun:
    run = FuzzRun(strict=True)
    short_settings(examples)(given(fuzzer.strategy)(fuzzer.body(run)))()
    return run


def fuzz_long(fuzzers: list[Fuzzer]) -> FuzzRun:
    run = FuzzRun(strict=False)
    share = long_seconds() / TOTAL_LOADERS
    for f in fuzzers:
        run_for(f.strategy, f.body(run), share)
    print(run.report())
    return run


# -- seeds: real files the project writes ---------------------------------------------------------
@dataclass
class Seeds:
    targets: list[bytes]
    recipes: list[tuple[bytes, bytes]]
    qgraphs: list[bytes]
    graph: QuantGraph
    calib: np.ndarray


def _two_input_graph() -> QuantGraph:
    """A graph with two inputs (one of fixed batch): the calibration loader's dict paths."""
    rng = np.random.default_rng(0)
    return QuantGraph(
        nodes=[
            Node("fc", "linear", ["a"], ["h"], weights={"weight": "w"}),
            Node("add", "add", ["h", "b"], ["y"]),
        ],
        inputs=["a", "b"],
        outputs=["y"],
        initializers={"w": rng.normal(size=(3, 4)).astype(np.float32)},
        name="two_inputs",
        input_shapes={"a": (2, 4), "b": (2, 3)},
    )


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Seeds:
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn (the demo extra)")
    return make_seeds(tmp_path_factory.mktemp("seeds"))


def make_seeds(tmp: Path) -> Seeds:
    """The digits MLP (a few training steps), its recipe for ``generic`` (and a variant with an
    equalisation and rewritten weights), its ``.qgraph``, the shipped target TOMLs."""
    import quantfw
    from quantfw.samples import digits_data, train_digits_mlp

    data = digits_data()
    x = data.x_train.reshape(len(data.x_train), 64)
    graph = train_digits_mlp(x, data.y_train, steps=20)
    calib = data.x_calib.reshape(-1, 64)[:48]
    recipe = quantfw.quantize(graph, calib, target="generic").recipe
    recipes = []
    j, s = recipe.save(tmp / "digits")
    recipes.append((j.read_bytes(), s.read_bytes()))
    # the same recipe with the parts the digits run leaves empty: an equalisation and weights
    relu = recipe.tensors["relu1_out"]
    relu.consumers = ("fc2",)
    factors = np.linspace(0.5, 2.0, 64).astype(np.float32)
    recipe.equalizations["relu1_out"] = Equalization("relu1_out", factors, ("fc2",), "test")
    recipe.weights["fc2.weight"] = (graph.initializers["fc2.weight"] * factors).astype(np.float32)
    recipe.check()
    j, s = recipe.save(tmp / "digits_eq")
    recipes.append((j.read_bytes(), s.read_bytes()))
    qgraphs = [save_graph(graph, tmp / "digits.qgraph").read_bytes()]
    qgraphs.append(save_graph(_two_input_graph(), tmp / "two.qgraph").read_bytes())
    tomls = list(builtin_target_paths())
    tomls += sorted((ROOT / "plugins" / "onnx_backend" / "quantfw_onnx" / "targets").glob("*.toml"))
    return Seeds([p.read_bytes() for p in tomls], recipes, qgraphs, graph, calib)


# -- target TOML ----------------------------------------------------------------------------------
def target_fuzzer(seeds: Seeds) -> Fuzzer:
    @st.composite
    def cases(draw: Any) -> dict[str, bytes]:
        raw = draw(st.sampled_from(seeds.targets))
        other = draw(st.sampled_from(seeds.targets))
        if draw(st.booleans()):
            doc = mutate_tree(draw, tomllib.loads(raw.decode()))
            raw = dump_toml(doc)
        else:
            raw = mutate_bytes(draw, raw, splice_from=other)
        return Case({"spec.toml": raw})

    return Fuzzer(
        "target",
        cases(),
        lambda folder: load_target(folder / "spec.toml"),
        (TargetSpecError,),
        lambda folder: ["spec.toml"],
    )


# -- recipe JSON + safetensors --------------------------------------------------------------------
def _safetensors_parts(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _safetensors_join(header: Any, body: bytes) -> bytes:
    head = dump_json(header)
    return len(head).to_bytes(8, "little") + head + body


def recipe_fuzzer(seeds: Seeds) -> Fuzzer:
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    @st.composite
    def cases(draw: Any) -> dict[str, bytes]:
        doc_raw, arrays_raw = draw(st.sampled_from(seeds.recipes))
        doc = json.loads(doc_raw)
        doc["arrays_file"] = "recipe.safetensors"  # the seeds were saved under other names
        doc_raw = dump_json(doc)
        what = draw(
            st.sampled_from(
                ["json-tree", "json-bytes", "st-header", "st-bytes", "st-array", "arrays-file"]
            )
        )
        if what == "json-tree":
            doc_raw = dump_json(mutate_tree(draw, doc))
        elif what == "json-bytes":
            doc_raw = mutate_bytes(draw, doc_raw, splice_from=arrays_raw[:4096])
        elif what == "st-header":
            header, body = _safetensors_parts(arrays_raw)
            arrays_raw = _safetensors_join(mutate_tree(draw, header), body)
        elif what == "st-bytes":
            arrays_raw = mutate_bytes(draw, arrays_raw, splice_from=doc_raw)
        elif what == "st-array":
            arrays = st_load(arrays_raw)
            key = draw(st.sampled_from(sorted(arrays)))
            new = draw(odd_array(arrays[key]))
            if new.dtype.kind in "fiub" and new.dtype.fields is None:
                arrays[key] = np.ascontiguousarray(new)
            else:
                del arrays[key]
            arrays_raw = st_save(arrays)
        else:
            doc["arrays_file"] = draw(
                st.sampled_from(
                    ["../outside.safetensors", "/etc/passwd", "missing.safetensors", "", "sub/",
                     ".", "recipe.json", 7, None, ["x"]]
                )
            )  # fmt: skip
            doc_raw = dump_json(doc)
        return Case({"recipe.json": doc_raw, "recipe.safetensors": arrays_raw})

    return Fuzzer(
        "recipe",
        cases(),
        lambda folder: Recipe.load(folder / "recipe.json"),
        (RecipeError,),
        lambda folder: ["recipe.json", "recipe.safetensors"],
    )


# -- .qgraph --------------------------------------------------------------------------------------
def _npz_members(raw: bytes) -> dict[str, bytes]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def qgraph_fuzzer(seeds: Seeds) -> Fuzzer:
    @st.composite
    def cases(draw: Any) -> dict[str, bytes]:
        raw = draw(st.sampled_from(seeds.qgraphs))
        members = _npz_members(raw)
        what = draw(st.sampled_from(["doc", "array", "member", "bytes", "compressed"]))
        if what == "doc":
            doc = json.loads(np.load(_io(members["__graph__.npy"])).tobytes())
            text = dump_json(mutate_tree(draw, doc))
            members["__graph__.npy"] = npy_bytes(np.frombuffer(text, np.uint8))
        elif what == "array":
            key = draw(st.sampled_from(sorted(members)))
            like = np.load(_io(members[key]))
            members[key] = draw(npy_file(like))
        elif what == "member":
            key = draw(st.sampled_from(sorted(members)))
            if draw(st.booleans()):
                del members[key]
            else:
                members[
                    "init/" + draw(st.sampled_from(["", "../x", "fc1.weight", "é"])) + ".npy"
                ] = members[key]
        if what == "bytes":
            raw = mutate_bytes(draw, raw)
        else:
            raw = zip_bytes(members, compress=what == "compressed")
        return Case({"model.qgraph": raw})

    return Fuzzer(
        "qgraph",
        cases(),
        lambda folder: load_graph(folder / "model.qgraph"),
        (ValueError,),
        lambda folder: ["model.qgraph"],
    )


def _io(raw: bytes):
    import io

    return io.BytesIO(raw)


# -- calibration .npz / .npy folder ---------------------------------------------------------------
def calibration_fuzzer(seeds: Seeds) -> Fuzzer:
    graphs = [seeds.graph, _two_input_graph()]
    rng = np.random.default_rng(0)
    two = {
        "a": rng.normal(size=(6, 4)).astype(np.float32),
        "b": rng.normal(size=(6, 3)).astype(np.float32),
    }

    @st.composite
    def cases(draw: Any) -> dict[str, bytes]:
        g = draw(st.sampled_from([0, 1]))
        arrays = {"pixels": seeds.calib[:16]} if g == 0 else dict(two)
        layout = draw(st.sampled_from(["npz", "npz-bytes", "per-input", "per-sample"]))
        files = Case({"graph": bytes([g])})
        if layout.startswith("npz"):
            members = {f"{k}.npy": draw(npy_file(v)) for k, v in arrays.items()}
            if draw(st.booleans()):
                name = draw(st.sampled_from(["zz", "pixels", "a", "", "x/y"]))
                members[f"{name}.npy"] = draw(npy_file(next(iter(arrays.values()))))
            raw = zip_bytes(members, compress=draw(st.booleans()))
            if layout == "npz-bytes":
                raw = mutate_bytes(draw, raw)
            files["calib.npz"] = raw
        elif layout == "per-input":
            for k, v in arrays.items():
                if draw(st.integers(0, 9)):
                    files[f"calib/{k}.npy"] = draw(npy_file(v))
        else:
            first = next(iter(arrays.values()))
            for i in range(draw(st.integers(1, 4))):
                sample = first[i] if draw(st.booleans()) else first[i : i + 2]
                files[f"calib/{i:03d}.npy"] = draw(npy_file(sample))
        return files

    def call(folder: Path) -> None:
        graph = graphs[(folder / "graph").read_bytes()[0]]
        spec = folder / "calib.npz"
        if not spec.exists():
            spec = folder / "calib"
            spec.mkdir(exist_ok=True)
        for _ in CalibrationData(CalibrationFile(spec), graph, batch_size=4):
            pass

    def names(folder: Path) -> list[str]:
        return ["calib.npz", f"{folder.name}/calib"]

    return Fuzzer("calibration", cases(), call, (CalibrationError,), names)


FUZZERS = {
    "target": target_fuzzer,
    "recipe": recipe_fuzzer,
    "qgraph": qgraph_fuzzer,
    "calibration": calibration_fuzzer,
}


# -- the harness's own checks ---------------------------------------------------------------------
def test_seeds_load_cleanly(seeds):
    """Unmutated seeds pass every loader within the bounds (else the bounds, not the loaders,
    would be what fails)."""
    for name, make in FUZZERS.items():
        fuzzer = make(seeds)
        for case in _unmutated(name, seeds):
            run = FuzzRun(strict=True)
            fuzzer.body(run)(case)
            assert run.tried == {name: 1}


def _unmutated(name: str, seeds: Seeds) -> list[dict[str, bytes]]:
    if name == "target":
        return [{"spec.toml": t} for t in seeds.targets]
    if name == "recipe":
        return [{"recipe.json": j, "recipe.safetensors": s} for j, s in seeds.recipes]
    if name == "qgraph":
        return [{"model.qgraph": q} for q in seeds.qgraphs]
    return [
        {"graph": b"\x00", "calib.npz": zip_bytes({"pixels.npy": npy_bytes(seeds.calib)})},
        {"graph": b"\x00", **{f"calib/{i}.npy": npy_bytes(seeds.calib[i]) for i in range(3)}},
    ]


def test_harness_catches_each_kind_of_failure():
    """The rule is not vacuous: a raw exception, a message without the file, a hang, an
    allocation past the bound and a dead worker are each reported."""
    import os
    import signal

    from fuzzing import MEMORY_BOUND

    def raw():
        raise KeyError("x")

    def unnamed():
        raise ValueError("something is wrong")

    def hang():
        while True:
            pass

    def alloc():
        np.ones(2 * MEMORY_BOUND, np.uint8)

    def die():
        os.kill(os.getpid(), signal.SIGSEGV)

    assert run_isolated(raw, (ValueError,)).problem(["f"]).startswith("undocumented exception")
    assert "does not name" in run_isolated(unnamed, (ValueError,)).problem(["f.toml"])
    assert run_isolated(lambda: None, (ValueError,)).problem(["f"]) is None
    assert run_isolated(hang, (ValueError,), timeout=1).kind == "timeout"
    assert run_isolated(alloc, (ValueError,)).kind == "memory"
    assert run_isolated(die, (ValueError,)).kind == "crash"


def test_deep_nesting_is_a_user_error(tmp_path, seeds):
    """Found by the slow lane: JSON / TOML nested 50 000 deep made json / tomllib raise
    RecursionError; each loader now refuses it with its own error naming the file."""
    from fuzzing import DEEP

    spec = tmp_path / "spec.toml"
    spec.write_bytes(dump_toml({"name": DEEP}))
    with pytest.raises(TargetSpecError, match="spec.toml.*nested too deeply"):
        load_target(spec)
    doc = json.loads(seeds.recipes[0][0])
    doc["arrays_file"] = "recipe.safetensors"
    doc["provenance"] = DEEP
    (tmp_path / "recipe.json").write_bytes(dump_json(doc))
    (tmp_path / "recipe.safetensors").write_bytes(seeds.recipes[0][1])
    with pytest.raises(RecipeError, match="recipe.json.*nested too deeply"):
        Recipe.load(tmp_path / "recipe.json")


# -- the lanes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", sorted(FUZZERS))
def test_fuzz_loader(loader, seeds):
    run = fuzz_short(FUZZERS[loader](seeds))
    assert run.tried[loader] >= EXAMPLES // 2


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzz_loaders_long(seeds):
    run = fuzz_long([make(seeds) for make in FUZZERS.values()])
    assert not run.failures, run.report()


def _rewrite_qgraph(path: Path, out: Path, edit) -> Path:
    """``path`` with its graph document passed through ``edit``, saved as ``out``."""
    import io
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    raw = np.load(io.BytesIO(members["__graph__.npy"]), allow_pickle=False)
    doc = json.loads(raw.tobytes().decode("utf-8"))
    edit(doc)
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(doc).encode("utf-8"), np.uint8))
    members["__graph__.npy"] = buf.getvalue()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out


def test_long_run_finds_on_main_are_user_errors(tmp_path: Path) -> None:
    """Found by the long lane on the merged main (seed 3000): a .qgraph whose input_dtypes is
    not a mapping, and a recipe spec whose axis is not an integer."""
    from quantfw.graph import Node, QuantGraph
    from quantfw.spec import QuantSpec, SpecError

    graph = QuantGraph(
        [Node("fc", "linear", ["x"], ["y"], weights={"weight": "w"})],
        ["x"],
        ["y"],
        {"w": np.ones((3, 4), np.float32)},
    )
    good = save_graph(graph, tmp_path / "m.qgraph")
    bad = _rewrite_qgraph(good, tmp_path / "dt.qgraph", lambda d: d.update(input_dtypes=5))
    with pytest.raises(ValueError, match=r"dt\.qgraph: invalid graph \('input_dtypes' must map"):
        load_graph(bad)
    with pytest.raises(SpecError, match=r"axis must be an integer, not \[0\]"):
        QuantSpec("int8", granularity="per_channel", axis=[0])
