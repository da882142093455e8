"""The folder of files that the rows of ``docs/bad-input.md`` run their commands in.

Every file is made here from real parts: the digits CNN exported to ONNX, its calibration data,
damaged copies of both, calibration modules that fail in the ways users' code fails, a recipe
saved by a real quantization, and a third-party plugin distribution (a ``.dist-info`` with an
entry point) that registers an algorithm name the built-ins already use.
"""

from __future__ import annotations

import io
import json
import textwrap
import zipfile
from pathlib import Path

import numpy as np

#: What each file in the folder is (the doc's "files" list names the same ones).
FILES = {
    "digits.onnx": "the digits CNN (input 'image', float32 [N, 1, 8, 8])",
    "calib.npz": "40 calibration images for it",
    "truncated.onnx": "the first 500 bytes of digits.onnx",
    "notes.onnx": "a text file named .onnx",
    "calib-nan.npz": "calibration images that are all NaN",
    "calib-int64.npz": "the calibration images as int64",
    "calib-names.npz": "two arrays named 'a' and 'b' (the model has one input, 'image')",
    "calib-shape.npz": "images flattened to [40, 64]",
    "huge.npz": "an archive whose array header declares 10**12 floats (and holds none)",
    "objects/": "a folder with one .npy file of Python objects (pickled)",
    "calibmod.py": "calibration functions: zero (ZeroDivisionError), db (RuntimeError), "
    "shards (KeyError after one batch), count (returns an int)",
    "brokenmod.py": "a calibration module whose import fails (ModuleNotFoundError)",
    "afile": "a regular file (so afile/out.onnx has no folder to go to)",
    "adir/": "an empty folder",
    "bad-target.toml": "a target file whose weight dtype is 'int9'",
    "saved.recipe.json": "a recipe saved by quantizing digits.onnx (+ saved.recipe.safetensors)",
    "renamed.json": "that recipe pair renamed together (+ renamed.safetensors)",
    "v0.recipe.json": "that recipe with schema_version 0",
    "extra/": "an installed third-party plugin 'clash' (distribution clash-plug) that "
    "registers an algorithm named 'minmax'",
}

CALIB_MODULE = """
import numpy as np


def zero():
    return [1 / 0]


def db():
    raise RuntimeError("database connection failed")


def shards():
    yield {"image": np.zeros((4, 1, 8, 8), np.float32)}
    raise KeyError("shard 2 missing")


def count():
    return 3
"""

CLASH_PLUGIN = """
import quantfw
from quantfw import AlgorithmInfo, Stage


class Noop:
    def run(self, ctx):
        pass


@quantfw.hookimpl
def quantfw_register_algorithms(register):
    register(AlgorithmInfo("minmax", Stage.CALIBRATE, Noop, description="a clashing minmax"))
"""


def make_folder(folder: Path) -> Path:
    """Write every file of :data:`FILES` into ``folder``; return it."""
    import onnx
    from quantfw_onnx.samples import digits_cnn

    import quantfw

    model, data = digits_cnn(seed=0)
    onnx.save(model, folder / "digits.onnx")
    x = data.x_calib[:40]
    np.savez(folder / "calib.npz", image=x)
    raw = (folder / "digits.onnx").read_bytes()
    (folder / "truncated.onnx").write_bytes(raw[:500])
    (folder / "notes.onnx").write_text("this is not a model\n")
    np.savez(folder / "calib-nan.npz", image=np.full_like(x, np.nan))
    np.savez(folder / "calib-int64.npz", image=x.astype(np.int64))
    np.savez(folder / "calib-names.npz", a=x, b=x)
    np.savez(folder / "calib-shape.npz", image=x.reshape(len(x), 64))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    with zipfile.ZipFile(folder / "huge.npz", "w") as archive:
        archive.writestr("image.npy", header.getvalue())
    (folder / "objects").mkdir()
    np.save(folder / "objects" / "000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "calibmod.py").write_text(CALIB_MODULE)
    (folder / "brokenmod.py").write_text("import no_such_package_xyz\n\ndef f():\n    return []\n")
    (folder / "afile").write_text("")
    (folder / "adir").mkdir()
    (folder / "bad-target.toml").write_text(
        textwrap.dedent(
            """\
            name = "my-npu"
            description = "a target with a typo"
            artifact = "none"

            [weight]
            dtype = "int9"

            [activation]
            dtype = "int8"

            [ops]
            quantize = ["linear"]
            """
        )
    )
    result = quantfw.quantize(folder / "digits.onnx", x, target="x86")
    result.recipe.save(folder / "saved.recipe")
    for suffix in (".json", ".safetensors"):
        src = (folder / f"saved.recipe{suffix}").read_bytes()
        (folder / f"renamed{suffix}").write_bytes(src)
    doc = json.loads((folder / "saved.recipe.json").read_text())
    doc["schema_version"] = 0
    (folder / "v0.recipe.json").write_text(json.dumps(doc))
    (folder / "v0.recipe.safetensors").write_bytes(
        (folder / "saved.recipe.safetensors").read_bytes()
    )
    extra = folder / "extra"
    (extra / "clash_plugin").mkdir(parents=True)
    (extra / "clash_plugin" / "__init__.py").write_text(CLASH_PLUGIN)
    info = extra / "clash_plug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clash-plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[quantfw]\nclash = clash_plugin\n")
    return folder
