"""Every row of docs/bad-input.md, run for real: the command's exit code and its message.

Commands run as subprocesses (``python -m quantfw.cli``) in a folder that ``bad_input_files``
fills, three at a time; ``python:`` rows are evaluated in this process in that folder.  The
message in the doc must appear in what the command printed, in order, ``…`` standing for text
the doc leaves out.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the bad-input table's rows need the onnx extra")
pytest.importorskip(
    "sklearn", reason="the bad-input table's model is the digits CNN (scikit-learn)"
)

from bad_input_files import FILES, make_folder  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
NO_VNNI = "*(CPU without VNNI)*"


def _rows() -> list[dict[str, str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 4 or not cells[1].startswith("`") or cells[0] == "case":
            continue
        case, command, message, code = cells
        rows.append({"case": case, "command": command.strip("`"), "message": message, "exit": code})
    return rows


ROWS = _rows()


def _matches(expected: str, printed: str) -> bool:
    """``expected`` (``…`` = anything) occurs in ``printed``, whitespace normalised."""
    flat = " ".join(printed.split())
    parts = [" ".join(p.split()) for p in expected.split("…")]
    pattern = ".*?".join(re.escape(p) for p in parts)
    return re.search(pattern, flat, re.S) is not None


def _run(command: str, folder: Path) -> tuple[int, str]:
    words = shlex.split(command)
    env = dict(os.environ)
    env.pop("QUANTFW_DISABLE_PLUGINS", None)
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        if key == "PYTHONPATH":
            value = os.pathsep.join(filter(None, [str(folder / value), env.get("PYTHONPATH")]))
        env[key] = value
    assert words[0] == "quantfw", command
    # the folder holds the calibration modules; a module:function source is looked up there
    out = subprocess.run(
        [sys.executable, "-m", "quantfw.cli", *words[1:]],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out.returncode, out.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from quantfw_onnx.cpu import cpu_vnni

    folder = make_folder(tmp_path_factory.mktemp("bad-input"))
    todo = [
        r
        for r in ROWS
        if not r["command"].startswith("python:") and not (NO_VNNI in r["case"] and cpu_vnni()[0])
    ]
    commands = [r["command"] for r in todo]
    with ThreadPoolExecutor(3) as pool:
        done = dict(zip(commands, pool.map(lambda c: _run(c, folder), commands), strict=True))
    return folder, done


def test_the_doc_lists_the_files_the_rows_use():
    listed = re.findall(r"^- `([^`]+)`:", DOC.read_text(encoding="utf-8"), re.M)
    assert listed == list(FILES)
    assert len(ROWS) >= 30


@pytest.mark.parametrize("row", ROWS, ids=[r["case"][:60] for r in ROWS])
def test_row(row, results, monkeypatch):
    folder, done = results
    command = row["command"]
    if command.startswith("python:"):
        import quantfw

        monkeypatch.chdir(folder)
        expression = command.removeprefix("python:").strip()
        if row["exit"] == "—":
            eval(expression, {"quantfw": quantfw})
            return
        with pytest.raises(Exception) as caught:
            eval(expression, {"quantfw": quantfw})
        assert type(caught.value).__name__ == row["exit"]
        assert _matches(row["message"], str(caught.value)), str(caught.value)
        return
    if NO_VNNI in row["case"]:
        from quantfw_onnx.cpu import cpu_vnni

        if cpu_vnni()[0]:
            pytest.skip(
                "this row needs a CPU without VNNI; .ci/run's AVX2 lane runs it with "
                "quantfw_onnx.cpu_mask hiding VNNI"
            )
    code, stderr = done[command]
    assert code == int(row["exit"]), stderr
    assert _matches(row["message"], stderr), stderr
    assert "Traceback" not in stderr or "--verbose" in command, stderr
