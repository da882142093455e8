"""The command line, run for real (subprocesses for import hygiene, click's runner elsewhere)."""

import json
import os
import subprocess
import sys
import textwrap

from click.testing import CliRunner

from quantfw.cli import cli
from quantfw.recipe import Recipe

HEAVY = ("torch", "tensorflow", "onnx", "onnxruntime")


def test_import_and_help_load_no_framework(tmp_path):
    # Sentinel packages shadow the real frameworks: importing any of them leaves a marker file.
    for name in HEAVY:
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            f"open({str(tmp_path / (name + '.imported'))!r}, 'w').close()\n"
        )
    code = textwrap.dedent(
        """
        import sys
        import quantfw, quantfw.cli
        quantfw.get_registry()                  # loading the plugins must not import them either
        try:
            quantfw.cli.cli.main(["--help"], standalone_mode=False)
        except SystemExit:
            pass
        print(sorted(m for m in sys.modules if m.split('.')[0] in HEAVY))
        """
    ).replace("HEAVY", repr(HEAVY))
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert not list(tmp_path.glob("*.imported"))
    # the sentinels are live: importing one does leave its marker
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    assert (tmp_path / "torch.imported").exists()


def test_quantize_writes_recipe(model_files, tmp_path):
    model, calib = model_files
    before = model.read_bytes()
    res = CliRunner().invoke(
        cli,
        [
            "--quiet",
            "quantize",
            str(model),
            "--calib",
            str(calib),
            "-a",
            "percentile:percentile=99.5",
            "--ignore",
            "head",
            "--recipe-out",
            str(tmp_path / "out" / "mlp"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["algorithms"]["calibrate"] == ["percentile"]
    assert any("head" in nodes for nodes in summary["float_reasons"].values())
    recipe = Recipe.load(tmp_path / "out" / "mlp.json")
    assert recipe.provenance["calibration_samples"] == 40
    assert recipe.provenance["algorithm_options"] == {"percentile": {"percentile": 99.5}}
    assert "w2" not in recipe.tensors and "w1" in recipe.tensors
    assert model.read_bytes() == before


def test_quantize_errors_are_clear(model_files, tmp_path):
    model, calib = model_files
    runner = CliRunner()
    res = runner.invoke(cli, ["quantize", str(model)])
    assert res.exit_code == 1 and "needs calibration data" in res.output
    res = runner.invoke(cli, ["quantize", str(model), "--calib", str(calib), "--target", "gneric"])
    assert res.exit_code == 1 and "generic" in res.output
    bad = tmp_path / "broken.qgraph"
    bad.write_bytes(b"not a zip file")
    res = runner.invoke(cli, ["quantize", str(bad), "--calib", str(calib)])
    assert res.exit_code == 1 and "broken.qgraph" in res.output
    res = runner.invoke(cli, ["quantize", str(model), "--calib", str(calib), "-a", "nosuch"])
    assert res.exit_code == 1 and "nosuch" in res.output
    res = runner.invoke(cli, ["quantize", str(tmp_path / "calib.npz"), "--calib", str(calib)])
    assert res.exit_code == 1 and "no frontend accepts" in res.output
    # option mistakes: one line naming what took the option, no traceback
    for args, words in [
        (["-a", "minmax:bogus=1"], ["algorithm 'minmax' rejected its options", "'bogus'"]),
        (["-F", "bogus=1"], ["frontend 'graph' takes no option 'bogus'", "takes no options"]),
        (["-F", "threads"], ["--frontend-option", "'threads' is not KEY=VALUE"]),
    ]:
        res = runner.invoke(cli, ["quantize", str(model), "--calib", str(calib), *args])
        assert res.exit_code in (1, 2) and all(w in res.output for w in words), res.output
        assert "Traceback" not in res.output and not isinstance(res.exception, TypeError)


def test_listings():
    runner = CliRunner()
    res = runner.invoke(cli, ["targets", "--json"])
    assert res.exit_code == 0
    assert any(t["name"] == "generic" and t["available"] for t in json.loads(res.output))
    res = runner.invoke(cli, ["algorithms", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["entropy"]["stage"] == "calibrate" and rows["nearest"]["stage"] == "round"
    res = runner.invoke(cli, ["plugins", "--json"])
    plugins = json.loads(res.output)["plugins"]
    builtin = next(p for p in plugins if p["name"] == "quantfw.builtins")
    assert builtin["status"] == "loaded" and "generic" in builtin["registers"]["target"]


def test_disable_plugin_flag_blocks_builtins():
    env = dict(os.environ)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantfw.cli",
            "--disable-plugin",
            "quantfw.builtins",
            "plugins",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    plugins = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert plugins["quantfw.builtins"]["status"] == "blocked"
    env["QUANTFW_DISABLE_PLUGINS"] = "quantfw.builtins"
    out = subprocess.run(
        [sys.executable, "-m", "quantfw.cli", "algorithms", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert json.loads(out.stdout) == []
