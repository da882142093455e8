"""What ``quantfw quantize`` writes for ONNX Runtime: the artifact and recipe get the usual file
permissions, and an x86-vnni artifact written on a CPU without VNNI says, in the summary and on
stderr, that ONNX Runtime would saturate running it there.

The no-VNNI case runs for real in a child process whose CPU hides VNNI
(:mod:`quantfw_onnx.cpu_mask`, CPUID faulting), skipped with the reason where the CPU cannot be
masked; the check itself is also tested from given CPU flags.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_onnx.cpu import cpu_vnni, saturation_warning  # noqa: E402
from quantfw_onnx.cpu_mask import availability, avx2_environment  # noqa: E402

import quantfw  # noqa: E402
from quantfw.api import Artifact  # noqa: E402
from quantfw.cli import cli  # noqa: E402
from quantfw.pipeline import host_warnings  # noqa: E402


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _cnn_files(tmp_path, kit):
    model = tmp_path / "cnn.onnx"
    onnx.save(kit.build_cnn(), str(model))
    np.savez(tmp_path / "calib.npz", input=kit.cnn_batch(8)["input"])
    return model, tmp_path / "calib.npz"


# -- permissions --------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_the_cli_writes_artifact_and_recipe_with_the_umask_mode(tmp_path, kit, umask, mask):
    model, calib = _cnn_files(tmp_path, kit)
    old = tmp_path / "old.onnx"  # an artifact the user made group-readable: replaced, not reset
    old.write_bytes(b"stale")
    old.chmod(0o640)
    umask(mask)
    for out in (tmp_path / "new.onnx", old):
        res = CliRunner().invoke(
            cli,
            ["--quiet", "quantize", str(model), "-t", "x86", "--calib", str(calib), "-o",
             str(out), "--recipe-out", str(tmp_path / "rec")],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    want = 0o666 & ~mask
    assert oct(_mode(tmp_path / "new.onnx")) == oct(want)
    assert oct(_mode(tmp_path / "rec.json")) == oct(want)
    assert oct(_mode(tmp_path / "rec.safetensors")) == oct(want)
    assert oct(_mode(old)) == oct(0o640)
    onnx.checker.check_model(onnx.load(str(old)), full_check=True)  # really replaced
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_model_with_external_data_gets_the_same_modes(tmp_path, kit, umask):
    # the writer for models over protobuf's 2 GiB limit, on a small model (its threshold is
    # 1 KiB): model and data file both published with the usual modes
    model = kit.build_cnn()
    out = tmp_path / "big.onnx"
    (tmp_path / "big.onnx.data").write_bytes(b"old")
    (tmp_path / "big.onnx.data").chmod(0o640)
    umask(0o027)
    data = OnnxRuntimeBackend._write_external(model, out)
    assert data == tmp_path / "big.onnx.data"
    assert (oct(_mode(out)), oct(_mode(data))) == (oct(0o640), oct(0o640))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert len(onnx.load(str(out)).graph.initializer) == len(model.graph.initializer)


# -- an x86-vnni artifact on a CPU without VNNI -------------------------------------------------
def test_the_saturation_check_from_given_cpu_flags(tmp_path):
    meta = {"needs_vnni": True, "max_pair_sum": 236}
    w = saturation_warning(tmp_path / "m.onnx", meta, frozenset({"avx2", "fma"}))
    assert w == (
        f"{tmp_path / 'm.onnx'} needs a CPU with VNNI and this one has avx2 without VNNI: its "
        "int8 weights' adjacent codes sum up to 236 (over 128), so ONNX Runtime on this machine "
        "would run its AVX2 kernel, which saturates in int16 and silently returns wrong "
        "numbers; deploy it on a VNNI CPU, or quantize for target 'x86-avx2' (or 'x86', chosen "
        "from this CPU) to run it here"
    )
    assert saturation_warning("m.onnx", meta, frozenset({"avx2", "avx512_vnni"})) is None
    assert saturation_warning("m.onnx", meta, frozenset({"avx2", "avx_vnni"})) is None
    safe = {"needs_vnni": False, "max_pair_sum": 128}  # pairs within the limit: exact anywhere
    assert saturation_warning("m.onnx", safe, frozenset({"avx2"})) is None


def test_the_backend_account_decides_for_an_x86_vnni_artifact(tmp_path):
    spec = quantfw.get_registry().target("x86-vnni")
    art = Artifact(tmp_path / "m.onnx", "x86-vnni", "onnx", {"host_warnings": []})
    # the ONNX Runtime backend found these weights safe here: no generic warning either
    assert host_warnings(spec, art, "onnxruntime", cpu_flags={"avx2"}) == []
    art.metadata.pop("host_warnings")  # a backend that says nothing: the target's [requires]
    (w,) = host_warnings(spec, art, "onnxruntime", cpu_flags={"avx2"})
    assert "needs one of the CPU flags avx512_vnni, avx_vnni, which this one lacks" in w


_MASK_OK, _MASK_WHY = availability()
CHILD = "import sys\nfrom quantfw.cli import main\nsys.exit(main())\n"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits CNN (its x86-vnni weights have pairs over the AVX2 limit) and calibration."""
    pytest.importorskip("sklearn", reason="the digits CNN's data ships with scikit-learn")
    from quantfw_onnx.samples import digits_cnn

    work = tmp_path_factory.mktemp("digits")
    model, data = digits_cnn(0)
    onnx.save(model, str(work / "cnn.onnx"))
    np.savez(work / "calib.npz", image=data.x_calib[:64])
    return work


@pytest.mark.skipif(not _MASK_OK, reason=f"cannot emulate an AVX2-only CPU here: {_MASK_WHY}")
def test_quantizing_for_x86_vnni_without_vnni_warns_in_the_summary_and_on_stderr(digits):
    out = digits / "masked.onnx"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "quantize", str(digits / "cnn.onnx"), "-t", "x86-vnni",
         "--calib", str(digits / "calib.npz"), "-o", str(out), "--json"],
        env=avx2_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    (warning,) = [w for w in summary["warnings"] if "VNNI" in w]
    assert warning.startswith(f"{out} needs a CPU with VNNI and this one has avx2 without VNNI")
    assert "silently returns wrong numbers" in warning
    assert f"WARNING quantfw.pipeline: {warning}" in proc.stderr.splitlines()
    assert out.is_file()  # the artifact is still written: it is meant for a VNNI machine


@pytest.mark.skipif(not cpu_vnni()[0], reason="this CPU has no VNNI: " + cpu_vnni()[1])
def test_no_such_warning_on_a_cpu_with_vnni(digits, caplog):
    from quantfw_onnx.samples import digits_cnn

    model, data = digits_cnn(0)
    with caplog.at_level(logging.WARNING, logger="quantfw"):
        res = quantfw.quantize(
            model, data.x_calib[:64], target="x86-vnni", output=digits / "native.onnx"
        )
    assert res.artifact.metadata["needs_vnni"]  # the same weights that warn without VNNI
    assert res.artifact.metadata["host_warnings"] == []
    assert not [w for w in res.summary.warnings if "VNNI" in w]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
