"""A third-party target lowered by a backend that does not know it: the plugin template's
``example-npu`` names the ONNX Runtime backend, which lowers it untouched, and the artifact
computes what the simulation computes."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the ONNX plugin's tests need ONNX Runtime")
pytest.importorskip("sklearn", reason="the digits CNN's data ships with scikit-learn")

import quantfw_onnx.plugin as onnx_plugin  # noqa: E402
from onnx_test_models import avx2_kernel_here  # noqa: E402
from quantfw_onnx.backend import OnnxRuntimeBackend  # noqa: E402
from quantfw_onnx.samples import digits_cnn  # noqa: E402

import quantfw  # noqa: E402
from quantfw.errors import UnavailableError  # noqa: E402


def test_npu_target_lowers_through_the_onnx_runtime_backend(
    example_plugin, quantfw_registry_with, tmp_path
):
    registry = quantfw_registry_with(example_plugin, onnx_plugin)
    assert [b.name for b in registry.backends_for("example-npu")] == ["onnxruntime"]
    assert registry.origin("target", "example-npu") == "quantfw_example.hooks"
    assert registry.origin("backend", "onnxruntime") == "quantfw_onnx.plugin"

    model, data = digits_cnn()
    res = quantfw.quantize(
        model, data.x_calib, target="example-npu", output=tmp_path / "npu.onnx",
        frontend_options={"threads": 1},
    )  # fmt: skip
    assert res.artifact.target == "example-npu" and res.artifact.format == "onnx"
    assert "onnxruntime wrote" in res.summary.backend
    # the NPU's scheme reached the artifact: int8 symmetric activations, zero points 0
    acts = res.recipe.of_role("activation").values()
    assert acts and all(t.spec.dtype == "int8" and not t.params.zero_point.any() for t in acts)

    x = data.x_test[:64]
    sim = res.simulate()({"image": x})[res.graph.outputs[0]]
    exact = OnnxRuntimeBackend().session(res.artifact.path, optimized=False, threads=1)
    np.testing.assert_allclose(exact.run(None, {"image": x})[0], sim, atol=1e-5 * np.abs(sim).max())
    assert (sim.argmax(1) == data.y_test[:64]).mean() >= 0.9
    # the NPU's full int8 weights have kernel pairs over the AVX2 limit: ONNX Runtime's fused
    # integer kernels compute the simulation only on a CPU whose kernel cannot saturate
    assert res.artifact.metadata["needs_vnni"]
    avx2, found = avx2_kernel_here()
    if avx2:
        with pytest.raises(UnavailableError, match="would saturate in int16"):
            OnnxRuntimeBackend(threads=1).run(res.artifact, {"image": x})
        pytest.skip(
            f"fused int8 kernels vs the simulation: this CPU has {found}, where ONNX Runtime's "
            "u8 x s8 kernel saturates on these weights (the backend refused, as it should)"
        )
    fused = OnnxRuntimeBackend(threads=1).run(res.artifact, {"image": x})[res.graph.outputs[0]]
    assert (fused.argmax(1) == sim.argmax(1)).mean() >= 0.98
