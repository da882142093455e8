"""Every example in the README runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_python_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert len(blocks) >= 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "mlp.recipe.json").exists()


def test_cli_listing_examples_run():
    commands = [
        line.split("#")[0].split()
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.startswith("quantfw ") and "\\" not in line and " quantize " not in line
    ]
    assert ["quantfw", "targets"] in commands
    for cmd in commands:
        out = subprocess.run(
            [sys.executable, "-m", "quantfw.cli", *cmd[1:]], capture_output=True, text=True
        )
        assert out.returncode == 0, (cmd, out.stderr)


def test_demo_main_job():
    out = subprocess.run(
        [sys.executable, "-m", "quantfw.cli", "demo"], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    acc = {ln[:22].strip(): float(ln[22:32].strip().rstrip("%")) for ln in lines[2:]}
    assert acc["float32"] > 93
    assert abs(acc["W:int8 A:int8"] - acc["float32"]) <= 1.0
    assert acc["W:ternary A:int8"] > acc["W:int2 A:int8"]  # absmean scaling beats min-max


def test_x86_main_job():
    """The README's main job: the digits CNN quantized for this CPU's x86 target, run in ORT."""
    import pytest

    pytest.importorskip("onnxruntime", reason="the main job needs the onnx extra")
    pytest.importorskip("sklearn", reason="the main job needs the demo extra (scikit-learn)")
    out = subprocess.run(
        [sys.executable, "-m", "quantfw_onnx.demo", "--repeats", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[1].startswith("target x86: this CPU's x86 target = x86-")
    rows = {ln[:24].strip(): ln[24:] for ln in lines[4:]}
    acc = {name: float(rest.split("%")[0]) for name, rest in rows.items()}
    assert set(acc) >= {"float32", "int8 static minmax", "int8 dynamic"}
    assert acc["float32"] > 95
    assert abs(acc["int8 static minmax"] - acc["float32"]) <= 1.0
