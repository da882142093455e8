"""Calibration and output mistakes: one clear line each, in the terms of the interface used.

Real files, real modules imported from the current folder, the real CLI (click's runner).
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

import quantfw
from quantfw.calibration import (
    MEMORY_ENV,
    CalibrationData,
    CalibrationError,
    CalibrationFile,
    CalibrationRequiredError,
    CalibrationSourceError,
    load_calibration_source,
    parse_size,
)
from quantfw.cli import cli
from quantfw.fileio import atomic_write_bytes
from quantfw.graph import Node, QuantGraph
from quantfw.graph_io import load_graph, save_graph
from quantfw.outputs import OutputPathError, check_output_path


def _graph(dtype: str = "float32", name: str = "x") -> QuantGraph:
    rng = np.random.default_rng(0)
    return QuantGraph(
        [
            Node("fc1", "linear", [name], ["h"], weights={"weight": "w1", "bias": "b1"}),
            Node("relu", "relu", ["h"], ["a"]),
            Node("head", "linear", ["a"], ["y"], weights={"weight": "w2"}),
        ],
        [name],
        ["y"],
        {
            "w1": rng.normal(size=(8, 4)).astype(np.float32),
            "b1": np.zeros(8, np.float32),
            "w2": rng.normal(size=(3, 8)).astype(np.float32),
        },
        name="mlp",
        input_shapes={name: (None, 4)},
        input_dtypes={name: dtype},
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding ``mlp.qgraph`` and ``calib.npz``, made the current folder (where
    ``--calib module:function`` looks for the module)."""
    save_graph(_graph(), tmp_path / "mlp.qgraph")
    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _module(folder, body: str) -> str:
    """A module with a fresh name (nothing cached in sys.modules) written in ``folder``."""
    name = f"calibsrc_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return name


def _quantize(*args: str):
    return CliRunner().invoke(cli, ["quantize", "mlp.qgraph", *args])


# -- 1. --calib module:function ----------------------------------------------------------------

GOOD_BATCH = "import numpy as np\nBATCH = {'x': np.ones((4, 4), np.float32)}\n"

USER_CODE_FAILURES = [
    ("def f():\n    return 1 / 0\n", "calling {spec}() raised ZeroDivisionError: division by zero"),
    (
        "def f():\n    raise RuntimeError('database connection failed')\n",
        "calling {spec}() raised RuntimeError: database connection failed",
    ),
    (
        "def f():\n    raise KeyError('shard 2 missing')\n",
        "calling {spec}() raised KeyError: 'shard 2 missing'",
    ),
    ("x = (\n", "importing module '{mod}' raised SyntaxError: '(' was never closed"),
    (
        "import quantfw_no_such_package_xyz\n",
        "importing module '{mod}' raised ModuleNotFoundError: No module named "
        "'quantfw_no_such_package_xyz'",
    ),
    ("raise ValueError('bad config')\n", "importing module '{mod}' raised ValueError: bad config"),
    ("import sys\nsys.exit(3)\n", "importing module '{mod}' raised SystemExit: 3"),
    (
        GOOD_BATCH + "def f():\n    yield BATCH\n    raise OSError('disk gone')\n",
        "iterating over what {spec}() returned (after 1 batch(es)) raised OSError: disk gone",
    ),
]


@pytest.mark.parametrize("body, expected", USER_CODE_FAILURES)
def test_user_calibration_code_failing_is_one_line_naming_it(workdir, body, expected):
    mod = _module(workdir, body)
    spec = f"{mod}:f"
    res = _quantize("--calib", spec)
    want = f"Error: calibration source {spec!r}: " + expected.format(spec=spec, mod=mod)
    assert res.exit_code == 1, res.output
    assert want in res.stderr, res.stderr
    assert res.stderr.rstrip().endswith("(run with --verbose for the traceback)")
    assert "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_verbose_shows_the_user_code_traceback(workdir):
    mod = _module(
        workdir, "def helper():\n    return {}['shard 2']\n\ndef f():\n    return helper()\n"
    )
    res = CliRunner().invoke(cli, ["-v", "quantize", "mlp.qgraph", "--calib", f"{mod}:f"])
    assert res.exit_code == 1
    err = res.stderr
    assert "Traceback (most recent call last)" in err
    assert f"{mod}.py" in err and "in helper" in err  # the user's own frames
    assert f"Error: calibration source '{mod}:f': calling {mod}:f() raised KeyError" in err
    assert "--verbose for the traceback" not in err


def test_python_api_keeps_the_user_exception_as_cause(workdir):
    mod = _module(workdir, "def f():\n    raise RuntimeError('database connection failed')\n")
    with pytest.raises(CalibrationSourceError, match="database connection failed") as info:
        quantfw.quantize(_graph(), CalibrationFile(f"{mod}:f"))
    assert type(info.value.__cause__) is RuntimeError
    assert isinstance(info.value, (CalibrationError, quantfw.QuantfwError))


@pytest.mark.parametrize(
    "body, func, expected",
    [
        (None, "f", "no module named '{mod}' in the current folder or on sys.path"),
        ("def batches():\n    return []\n", "nope", "module '{mod}' has no function 'nope'; "
         "its functions: batches"),
        ("value = 3\n", "value", "{mod}.value is an object of type int, not a function"),
        ("def f():\n    return 42\n", "f", "{mod}:f() returned an object of type int; it must "
         "return an iterable of batches"),
    ],
)  # fmt: skip
def test_calibration_source_mistakes_need_no_traceback(workdir, body, func, expected):
    mod = _module(workdir, body) if body else f"calibsrc_missing_{uuid.uuid4().hex[:6]}"
    spec = f"{mod}:{func}"
    res = _quantize("--calib", spec)
    assert res.exit_code == 1
    line = f"Error: calibration source {spec!r}: " + expected.format(mod=mod)
    assert line in res.stderr, res.stderr
    assert "--verbose" not in res.stderr and "Traceback" not in res.output


def test_a_failed_import_leaves_sys_path_and_modules_clean(workdir):
    mod = _module(workdir, "raise ValueError('bad config')\n")
    before = list(sys.path)
    with pytest.raises(CalibrationSourceError):
        load_calibration_source(f"{mod}:f", ["x"])
    assert sys.path == before and mod not in sys.modules


def test_a_working_module_function_still_calibrates(workdir):
    mod = _module(
        workdir,
        GOOD_BATCH + "def f():\n    for _ in range(3):\n        yield BATCH\n",
    )
    res = _quantize("--calib", f"{mod}:f", "--json")
    assert res.exit_code == 0, res.output
    assert '"calibration_samples": 12' in res.stdout


# -- 2. without --calib: the hint in the terms of the interface ---------------------------------


def test_missing_calibration_hint_speaks_cli_on_the_cli(workdir):
    res = _quantize()
    assert res.exit_code == 1
    err = res.stderr
    assert "needs calibration data: pass --calib" in err
    assert "--dynamic" in err and "-a none" in err
    assert "overrides=" not in err and "calibration_data" not in err and "algorithms=" not in err
    # the advice works: --dynamic quantizes without data
    res = _quantize("--dynamic")
    assert res.exit_code == 0, res.output


def test_missing_calibration_hint_speaks_python_in_python():
    with pytest.raises(CalibrationRequiredError) as info:
        quantfw.quantize(_graph())
    text = str(info.value)
    assert "pass calibration_data" in text and "overrides={'dynamic': True}" in text
    assert "algorithms=['none']" in text and "--" not in text
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do
    quantfw.quantize(_graph(), overrides={"dynamic": True})  # the advice works


# -- 3. outputs checked before any work ----------------------------------------------------------


def _marker_module(workdir) -> tuple[str, object]:
    """A calibration function that leaves a file behind when it runs."""
    marker = workdir / "calibration-ran"
    mod = _module(
        workdir,
        GOOD_BATCH + f"def f():\n    open({str(marker)!r}, 'w').close()\n    yield BATCH\n",
    )
    return f"{mod}:f", marker


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-o", "afile/out.qgraph"], "cannot write the output (-o) 'afile/out.qgraph': '{d}/afile' "
         "is a file, not a folder; choose another path"),
        (["-o", "afile/sub/out.qgraph"], "cannot write the output (-o) 'afile/sub/out.qgraph': "
         "'{d}/afile' is a file, so the folder '{d}/afile/sub' cannot be created"),
        (["-o", "adir"], "cannot write the output (-o) 'adir': it is a folder; give a file path"),
        (["--recipe-out", "afile/r"], "cannot write the recipe (--recipe-out) 'afile/r.json': "
         "'{d}/afile' is a file, not a folder"),
        (["--recipe-out", "adir/r.json"], None),  # fine: no error
    ],
)  # fmt: skip
def test_unwritable_outputs_fail_before_calibration(workdir, args, expected):
    (workdir / "afile").write_text("a regular file")
    (workdir / "adir").mkdir()
    spec, marker = _marker_module(workdir)
    res = _quantize("--calib", spec, "-t", "generic", *args)
    if expected is None:
        assert res.exit_code == 0, res.output
        assert (workdir / "adir" / "r.json").is_file() and marker.exists()
        return
    assert res.exit_code == 1
    assert f"Error: {expected.format(d=workdir)}" in res.stderr, res.stderr
    assert not marker.exists()  # nothing ran


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_no_file_can_be_made_in_is_refused_early(workdir):
    # /proc takes no new files, whoever runs the test (root included)
    spec, marker = _marker_module(workdir)
    res = _quantize("--calib", spec, "--recipe-out", "/proc/quantfw-test/r")
    assert res.exit_code == 1 and not marker.exists()
    assert (
        "Error: cannot write the recipe (--recipe-out) '/proc/quantfw-test/r.json': the folder "
        "'/proc' (where '/proc/quantfw-test' would be created) is not writable"
    ) in res.stderr
    with pytest.raises(OutputPathError, match="'/proc/out.bin'"):
        check_output_path("/proc/out.bin")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root writes into a 0o500 folder; /proc covers the unwritable case for root",
)
def test_a_read_only_folder_is_refused_early(workdir):
    ro = workdir / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match=r"the folder '.*ro' is not writable"):
            check_output_path(ro / "out.onnx", "output (-o)")
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_the_late_write_error_names_the_output_not_the_temp_file():
    with pytest.raises(OSError) as info:
        atomic_write_bytes("/proc/quantfw-out.bin", b"x")
    text = str(info.value)
    assert "cannot write '/proc/quantfw-out.bin'" in text and ".tmp" not in text


def test_python_api_checks_the_output_before_calibrating(workdir):
    (workdir / "afile").write_text("x")
    spec, marker = _marker_module(workdir)
    registry = quantfw.get_registry()
    if "x86" not in registry.components("target") or not any(
        b.availability()[0] for b in registry.backends_for(registry.target("x86"))
    ):
        pytest.skip("needs a usable x86 backend: the onnx extra (quantfw-onnx, onnxruntime)")
    with pytest.raises(OutputPathError, match="afile"):
        quantfw.quantize(_graph(), CalibrationFile(spec), target="x86", output="afile/m.onnx")
    assert not marker.exists()


# -- 4. calibration dtypes against the model's declared inputs -----------------------------------


def _batches(data, graph, **kw):
    return list(CalibrationData(data, graph, **kw))


def test_integer_data_for_a_float_input_names_input_and_dtypes(workdir):
    ints = np.arange(40 * 4, dtype=np.int64).reshape(40, 4)
    with pytest.raises(CalibrationError) as info:
        _batches({"x": ints}, _graph("float32"))
    assert str(info.value) == (
        "calibration batch 0, input 'x': got int64 data, but the model's input is float32 "
        "(float); give float values (e.g. array.astype(numpy.float32))"
    )
    np.savez(workdir / "ints.npz", x=ints)
    res = _quantize("--calib", "ints.npz")
    assert res.exit_code == 1
    assert "Error: ints.npz: calibration batch 0, input 'x': got int64 data" in res.stderr


def test_float64_data_is_read_as_float32_with_the_same_result():
    x = np.random.default_rng(2).normal(size=(16, 4))
    b64 = _batches(x, _graph(), batch_size=8)
    b32 = _batches(x.astype(np.float32), _graph(), batch_size=8)
    assert all(b["x"].dtype == np.float32 for b in b64)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(b64, b32, strict=True))
    r64 = quantfw.quantize(_graph(), x).recipe
    r32 = quantfw.quantize(_graph(), x.astype(np.float32)).recipe
    assert r64.tensors.keys() == r32.tensors.keys()
    for k, t in r64.tensors.items():
        assert np.array_equal(t.params.scale, r32.tensors[k].params.scale), k


def test_integer_inputs_widen_narrow_when_values_fit_and_refuse_floats():
    g = _graph("int64", "ids")
    ids32 = np.arange(8, dtype=np.int32).reshape(2, 4)
    assert _batches({"ids": ids32}, g)[0]["ids"].dtype == np.int64
    g32 = _graph("int32", "ids")
    fits = np.arange(8, dtype=np.int64).reshape(2, 4)
    assert _batches({"ids": fits}, g32)[0]["ids"].dtype == np.int32
    with pytest.raises(CalibrationError, match=r"int64 values from 0 to 4294967296 do not fit"):
        _batches({"ids": np.array([[0, 1, 2, 2**32]], np.int64)}, g32)
    with pytest.raises(CalibrationError, match=r"got float32 data, but the model's input is int64"):
        _batches({"ids": fits.astype(np.float32)}, g)
    with pytest.raises(CalibrationError, match=r"got bool data, .* is float32"):
        _batches({"x": np.ones((2, 4), bool)}, _graph())


def test_input_dtypes_survive_a_graph_file(tmp_path):
    path = save_graph(_graph("float16"), tmp_path / "g.qgraph")
    assert load_graph(path).input_dtypes == {"x": "float16"}


# -- 5. the activation memory budget --------------------------------------------------------------


def test_parse_size_and_a_bad_budget(monkeypatch):
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("512MB") == 512 * 10**6
    assert parse_size("1e9") == 10**9 and parse_size(" 64 kib ") == 64 * 1024
    for bad in ("lots", "-1", "0"):
        with pytest.raises(CalibrationError, match=f"{MEMORY_ENV}='{bad}': give a positive"):
            parse_size(bad)
    # a mistyped budget is reported even where the frontend makes no estimate
    monkeypatch.setenv(MEMORY_ENV, "2 gigs")
    with pytest.raises(CalibrationError, match=f"{MEMORY_ENV}='2 gigs'"):
        CalibrationData(np.ones((4, 4)), _graph())


def test_batches_over_the_budget_run_in_chunks(monkeypatch, caplog):
    x = np.random.default_rng(3).normal(size=(100, 4)).astype(np.float32)
    monkeypatch.setenv(MEMORY_ENV, "1000")  # 1000 B at 64 B a sample: 15 samples a chunk
    with caplog.at_level("WARNING", logger="quantfw.calibration"):
        data = CalibrationData(x, _graph(), batch_size=64, sample_bytes=64)
        chunks = list(data)
        again = list(data)
    assert [len(c["x"]) for c in chunks] == [15, 15, 15, 15, 4, 15, 15, 6]
    assert np.array_equal(np.concatenate([c["x"] for c in chunks]), x)
    assert [len(c["x"]) for c in again] == [len(c["x"]) for c in chunks]
    assert data.num_samples == 100
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "a calibration batch of 64 samples would take about 4.0 KiB of activations (64 B per "
        "sample), over the 1000 B budget: running it in chunks of 15 samples (set "
        f"{MEMORY_ENV} to change the budget)"
    ]
    # a generator's big batches are cut as well (and cached once, cut)
    gen = (x[i : i + 50] for i in range(0, 100, 50))
    assert [len(c["x"]) for c in CalibrationData(gen, _graph(), sample_bytes=64)] == [
        15, 15, 15, 5, 15, 15, 15, 5,
    ]  # fmt: skip
    # within the budget, or with no estimate: untouched
    assert [len(c["x"]) for c in CalibrationData(x, _graph(), batch_size=64)] == [64, 36]
    monkeypatch.setenv(MEMORY_ENV, "1MiB")
    assert [len(c["x"]) for c in CalibrationData(x, _graph(), 64, sample_bytes=64)] == [64, 36]


def test_a_fixed_batch_model_is_not_cut_only_warned(monkeypatch, caplog):
    g = _graph()
    g.input_shapes = {"x": (8, 4)}
    monkeypatch.setenv(MEMORY_ENV, "100")
    with caplog.at_level("WARNING", logger="quantfw.calibration"):
        sizes = [len(c["x"]) for c in CalibrationData(np.ones((16, 4)), g, sample_bytes=64)]
    assert sizes == [8, 8]
    assert "the model fixes its batch size, so it cannot be cut" in caplog.text
