"""Every example in the README runs as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


#: Packages a README block may need beyond the core (then it runs only where they are installed).
EXTRAS = {
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "sklearn",
    "quantfw_onnx",
    "quantfw_torch",
}


def _imports(block: str) -> set[str]:
    return set(re.findall(r"^\s*(?:import|from)\s+(\w+)", block, re.M))


def _core_blocks() -> list[tuple[int, str]]:
    """Blocks that import no extra and use no name an extra-needing block defined."""
    import ast

    tainted: set[str] = set()
    provided: set[str] = set()  # names the core blocks define
    core = []
    for i, block in enumerate(_blocks("python")):
        tree = ast.parse(block)
        defined = {
            n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        } | {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
             if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}  # fmt: skip
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if _imports(block) & EXTRAS or used & tainted:
            tainted |= defined - provided
        else:
            provided |= defined
            tainted -= defined
            core.append((i, block))
    return core


def _run(blocks: list[str], tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in blocks:
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)


def test_core_python_examples_run_in_order(tmp_path, monkeypatch):
    """The examples that need nothing but the core run on a core-only install."""
    blocks = _core_blocks()
    assert len(blocks) >= 3
    _run(blocks, tmp_path, monkeypatch)
    assert (tmp_path / "mlp.recipe.json").exists()


@pytest.mark.slow
def test_python_examples_run_in_order(tmp_path, monkeypatch):
    """Every example, in order, where every extra they import is installed."""
    import importlib.util

    import pytest

    blocks = list(enumerate(_blocks("python")))
    assert len(blocks) >= 3
    needed = sorted(set().union(*(_imports(b) for _, b in blocks)) & EXTRAS)
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the README's framework examples need {', '.join(missing)} installed")
    _run(blocks, tmp_path, monkeypatch)


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
    import pytest

    pytest.importorskip("sklearn", reason="quantfw demo needs the demo extra (scikit-learn)")
    out = subprocess.run(
        [sys.executable, "-m", "quantfw.cli", "demo"], capture_output=True, text=True, check=True
    )
    lines = out.stdout.splitlines()
    acc = {ln[:22].strip(): float(ln[22:32].strip().rstrip("%")) for ln in lines[2:]}
    assert acc["float32"] > 93
    assert abs(acc["W:int8 A:int8"] - acc["float32"]) <= 1.0
    assert acc["W:ternary A:int8"] > acc["W:int2 A:int8"]  # absmean scaling beats min-max


@pytest.mark.slow
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
