"""Plugin mistakes a user meets, each answered by a clear message instead of a traceback.

* A plugin registering a component name that is already taken (a built-in's ``minmax``, another
  plugin's frontend) is left out whole and named, with ``--disable-plugin <it>``; the rest works.
* A model file or target whose plugin is not installed (or disabled) names the plugin and the fix.
* ``import quantfw`` and ``quantfw --help`` import no heavy module and load no plugin.

Plugins are real: fake installed distributions (``<dist>-<version>.dist-info`` with an
``entry_points.txt``) beside a module file in a temporary folder on ``sys.path``, found through
``importlib.metadata`` like any installed plugin; the CLI runs in a subprocess where it matters.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import quantfw
from quantfw.api import AlgorithmInfo, hookimpl
from quantfw.cli import cli
from quantfw.plugins import (
    UnknownComponentError,
    get_registry,
    make_plugin_manager,
    use_plugin_manager,
)

#: Registers the built-in ``minmax`` again, beside an algorithm of its own and a frontend.
CLASH_SOURCE = """
    from quantfw.api import AlgorithmInfo, FrontendInfo, Stage, hookimpl

    class Algo:
        def run(self, ctx):
            raise AssertionError("a left-out plugin's algorithm must never run")

    class Reader:
        def accepts(self, model):
            return False

    @hookimpl
    def quantfw_register_frontends(register):
        register(FrontendInfo("clash-reader", Reader))

    @hookimpl
    def quantfw_register_algorithms(register):
        register(AlgorithmInfo("clash-only", Stage.ROUND, Algo))
        register(AlgorithmInfo("minmax", Stage.CALIBRATE, Algo))
    """

#: a fresh plugin manager around every test (tests/plugin_site.py)
pytestmark = pytest.mark.usefixtures("clean_plugin_state")


def frontend_source(frontend: str, extra: str) -> str:
    """A plugin registering frontend ``frontend`` and algorithm ``extra``."""
    return f"""
        from quantfw.api import AlgorithmInfo, FrontendInfo, Stage, hookimpl

        class Reader:
            def accepts(self, model):
                return False

        class Algo:
            def run(self, ctx):
                pass

        @hookimpl
        def quantfw_register_frontends(register):
            register(FrontendInfo({frontend!r}, Reader))

        @hookimpl
        def quantfw_register_algorithms(register):
            register(AlgorithmInfo({extra!r}, Stage.ROUND, Algo))
        """


def install(site: Path, dist: str, module: str, source: str, ep_name: str) -> None:
    """A fake installed distribution ``dist`` whose ``quantfw`` entry point ``ep_name`` is
    module ``module`` (written from ``source``)."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(f"[quantfw]\n{ep_name} = {module}\n", encoding="utf-8")
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    importlib.invalidate_caches()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``quantfw ARGS`` in a fresh interpreter (this checkout's code, the test's PYTHONPATH)."""
    code = "import sys; from quantfw.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def assert_names_the_clash(stderr: str) -> None:
    assert "plugin 'clash' (distribution clash-plug 0.1) is left out" in stderr, stderr
    assert "algorithm 'minmax' is already registered by plugin 'quantfw.builtins'" in stderr
    assert "--disable-plugin clash" in stderr and "Traceback" not in stderr
    assert "QUANTFW_DISABLE_PLUGINS=quantfw.builtins" not in stderr  # the old, wrong advice


# ------------------------------------------------------------------------------------------------
# a plugin clashing with a built-in name
# ------------------------------------------------------------------------------------------------


def test_cli_leaves_out_a_plugin_that_reregisters_a_builtin_algorithm(site, model_files) -> None:
    install(site, "clash-plug", "clash_mod", CLASH_SOURCE, "clash")

    res = run_cli("algorithms", "--json")
    assert res.returncode == 0, res.stderr
    assert_names_the_clash(res.stderr)
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["minmax"]["origin"] == "quantfw.builtins"
    assert "smoothquant" in rows and "clash-only" not in rows  # left out whole, no half-load

    res = run_cli("targets")
    assert res.returncode == 0, res.stderr
    assert "generic" in res.stdout
    assert_names_the_clash(res.stderr)

    model, calib = model_files
    res = run_cli("quantize", str(model), "--calib", str(calib), "-a", "minmax", "--json")
    assert res.returncode == 0, res.stderr
    assert_names_the_clash(res.stderr)
    summary = json.loads(res.stdout)
    assert summary["algorithms"]["calibrate"] == ["minmax"]
    assert summary["algorithms"]["transform"] == ["smoothquant"]

    # the hint works: disabled, the plugin is not imported and nothing is reported
    res = run_cli("--disable-plugin", "clash", "algorithms")
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_plugins_listing_reports_the_left_out_plugin(site) -> None:
    install(site, "clash-plug", "clash_mod", CLASH_SOURCE, "clash")
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert plugins["quantfw.builtins"]["status"] == "loaded"
    clash = plugins["clash"]
    assert clash["status"] == "failed"
    assert "left out" in clash["reason"] and "--disable-plugin clash" in clash["reason"]
    assert clash["registers"]["algorithm"] == ["clash-only", "minmax"]  # what it tried
    (conflict,) = doc["conflicts"]
    assert conflict["kind"] == "algorithm" and conflict["name"] == "minmax"
    assert conflict["kept"] == "quantfw.builtins" and conflict["left_out"] == "clash"

    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0
    assert "clash (clash-plug 0.1): failed — plugin 'clash'" in res.output


def test_python_api_leaves_out_the_clashing_plugin_with_a_warning(
    site, model_files, caplog
) -> None:
    install(site, "clash-plug", "clash_mod", CLASH_SOURCE, "clash")
    registry = get_registry()  # no DuplicateComponentError
    assert registry.origin("algorithm", "minmax") == "quantfw.builtins"
    assert "clash-reader" not in registry.frontends and "clash-only" not in registry.algorithms
    assert registry.report("clash").status == "failed"
    assert "--disable-plugin clash" in caplog.text
    model, calib = model_files
    result = quantfw.quantize(model, dict(np.load(calib)), algorithms=["minmax"], progress=False)
    assert result.summary.to_dict()["algorithms"]["calibrate"] == ["minmax"]


def test_every_kind_of_clash_leaves_the_plugin_out(quantfw_registry_with) -> None:
    from quantfw.api import ConverterInfo, EngineInfo

    generic = get_registry().target("generic")

    class TargetAndEngine:  # clashes with two built-in names of other kinds
        @hookimpl
        def quantfw_register_targets(self, register):
            register(generic)

        @hookimpl
        def quantfw_register_engines(self, register):
            register(EngineInfo("numpy", object))

        @hookimpl
        def quantfw_register_converters(self, register):
            register(ConverterInfo("a-to-b", "a", "b", object))

    class Twice:  # one name twice in one plugin: left out as well
        @hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("twice-algo", "round", object))
            register(AlgorithmInfo("twice-algo", "round", object))

    registry = quantfw_registry_with(TargetAndEngine(), Twice(), strict=False)
    report = registry.report("TargetAndEngine")
    assert report.status == "failed"
    assert "target 'generic' is already registered by plugin 'quantfw.builtins'" in report.reason
    assert "engine 'numpy' is already registered" in report.reason
    assert "a-to-b" not in registry.converters  # its converter went with it
    assert registry.origin("target", "generic") == "quantfw.builtins"
    twice = registry.report("Twice")
    assert twice.status == "failed" and "'twice-algo' is registered twice" in twice.reason
    assert "twice-algo" not in registry.algorithms
    assert {c.second.name for c in registry.conflicts} == {"TargetAndEngine", "Twice"}


# ------------------------------------------------------------------------------------------------
# two third-party plugins clashing: a deterministic winner
# ------------------------------------------------------------------------------------------------


def test_two_third_party_plugins_first_distribution_wins(site) -> None:
    # installed in the "wrong" order on purpose: the winner is by distribution name, not chance
    install(site, "zeta-reader", "zeta_mod", frontend_source("shared-reader", "zeta-algo"), "zeta")
    install(
        site, "alpha-reader", "alpha_mod", frontend_source("shared-reader", "alpha-algo"), "alpha"
    )
    registry = get_registry()
    assert registry.origin("frontend", "shared-reader") == "alpha"
    assert "alpha-algo" in registry.algorithms and "zeta-algo" not in registry.algorithms
    zeta = registry.report("zeta")
    assert zeta.status == "failed"
    assert "frontend 'shared-reader' is already registered by plugin 'alpha'" in zeta.reason
    assert "--disable-plugin zeta" in zeta.reason
    # disabling the winner lets the other one in
    pm = make_plugin_manager(disabled=["alpha"])
    with use_plugin_manager(pm):
        registry = get_registry()
    assert registry.origin("frontend", "shared-reader") == "zeta"
    assert registry.report("zeta").status == "loaded"


def test_quantfws_own_plugins_keep_their_names_before_third_party_ones(site) -> None:
    # "aaa" sorts before "quantfw-tf", yet quantfw's own distribution keeps the name
    install(site, "aaa-reader", "aaa_mod", frontend_source("tf-reader", "aaa-algo"), "aaa")
    install(site, "quantfw-tf", "qtf_mod", frontend_source("tf-reader", "qtf-algo"), "tf")
    registry = get_registry()
    assert registry.origin("frontend", "tf-reader") == "tf"
    assert registry.report("aaa").status == "failed"
    assert "--disable-plugin aaa" in registry.report("aaa").reason


# ------------------------------------------------------------------------------------------------
# a model or target whose plugin is not installed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("digits.onnx", 'pip install "quantfw[onnx]"'),
        ("model.tflite", "'edge' plugin (quantfw-edge)"),
        ("model.keras", "'tf' plugin (quantfw-tf)"),
        ("model.pt", "torch.nn.Module objects from Python, not files"),
    ],
)
def test_model_file_of_a_plugin_not_installed(
    quantfw_plugin_manager, tmp_path, model_files, name, expected
) -> None:
    _, calib = model_files
    model = tmp_path / name
    model.write_bytes(b"\x08\x07")  # never read: no installed frontend takes the suffix
    res = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib)])
    assert res.exit_code == 1, res.output
    assert f"no frontend accepts model file {str(model)!r}" in res.output
    assert expected in res.output and "graph reads .qgraph" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_savedmodel_folder_names_the_tf_plugin(quantfw_plugin_manager, tmp_path) -> None:
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    with pytest.raises(UnknownComponentError, match="TensorFlow SavedModel folders need the 'tf'"):
        quantfw.quantize(folder, None)


def test_target_of_a_plugin_not_installed(quantfw_plugin_manager, model_files) -> None:
    model, calib = model_files
    res = CliRunner().invoke(cli, ["quantize", str(model), "--calib", str(calib), "-t", "x86"])
    assert res.exit_code == 1, res.output
    assert "unknown target 'x86'" in res.output
    assert (
        "need the 'onnx' plugin (quantfw-onnx), which is not installed: pip install \"quantfw[onnx]\""
        in res.output
    )


# ------------------------------------------------------------------------------------------------
# startup: nothing heavy for --help
# ------------------------------------------------------------------------------------------------

HEAVY = ("ml_dtypes", "safetensors", "onnx", "onnxruntime", "torch", "tensorflow")


def test_help_and_version_import_nothing_heavy() -> None:
    """``import quantfw`` and the CLI's --help / --version import none of the heavy modules and
    scan no plugin entry points (``quantfw.plugins`` is never imported)."""
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        import quantfw
        assert quantfw.__version__
        from quantfw.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            for args in (["--help"], ["--version"], ["quantize", "--help"],
                         ["--disable-plugin", "onnx", "targets", "--help"]):
                assert main(args) == 0, args
        assert "Usage: quantfw quantize" in out.getvalue()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        loaded += sorted(m for m in ("quantfw.plugins", "quantfw.api") if m in sys.modules)
        print(loaded)
        """
    ).replace("HEAVY", repr(HEAVY))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_package_still_offers_every_name() -> None:
    """The names ``import quantfw`` promises resolve on use, and submodules are reachable."""
    for name in quantfw.__all__:
        assert getattr(quantfw, name) is not None, name
    assert set(quantfw.__all__) <= set(dir(quantfw))
    assert quantfw.plugins.get_registry is get_registry
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        quantfw.no_such_name  # noqa: B018
