"""Block problems on torch models: the torch frontend cuts a trainable, fake-quantized module of
a block out of the simulated model, and it computes what the whole simulated model computes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch plugin's tests need torch")


from torch_test_models import mlp_rows, small_mlp  # noqa: E402

import quantfw  # noqa: E402
from quantfw import AlgorithmInfo, Stage  # noqa: E402


def run_with_blocks(quantfw_registry_with, fn):
    """Quantize the MLP for x86-vnni with ``fn(ctx, linear node names)`` as the round stage."""
    import quantfw_onnx.plugin as onnx_plugin
    import quantfw_torch.plugin as torch_plugin

    class Probe:
        def run(self, ctx):
            fn(ctx, [n.name for n in ctx.graph.nodes if n.op.value == "linear"])

    class Plugin:
        @quantfw.hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("probe", Stage.ROUND, Probe))

    quantfw_registry_with(Plugin(), onnx_plugin, torch_plugin)
    return quantfw.quantize(
        small_mlp(), mlp_rows(n=64), target="x86-vnni", algorithms=["none", "probe"]
    )


def _between(ctx, first, last):
    names = [n.name for n in ctx.graph.nodes]
    return names[names.index(first) : names.index(last) + 1]


def test_block_module_computes_the_simulated_model(quantfw_registry_with):
    checked = []

    def look(ctx, linears):
        for first, last in [(linears[0], linears[1]), (linears[1], linears[2])]:
            block = ctx.block_problem(_between(ctx, first, last))
            assert len(block.inputs) == 1 and len(block.outputs) == 1
            assert block.block.engine == "torch"
            for ins, want in zip(
                block.input_batches(), block.output_batches(quantized=True), strict=True
            ):
                x = torch.from_numpy(ins[block.inputs[0]])
                (got,) = block.block.module(x)
                w = want[block.outputs[0]]
                np.testing.assert_allclose(got.detach().numpy(), w, atol=1e-5 * np.abs(w).max())
            checked.append(block.nodes)

    run_with_blocks(quantfw_registry_with, look)
    assert len(checked) == 2


def test_gradients_reach_the_weights_and_commit_writes_them(quantfw_registry_with):
    def look(ctx, linears):
        block = ctx.block_problem(_between(ctx, linears[0], linears[1]))
        params = block.block.parameters
        assert set(params) == {
            ctx.graph.node(n).weights[r] for n in linears[:2] for r in ("weight", "bias")
        }
        ins, target = next(block.pairs())
        (out,) = block.block.module(torch.from_numpy(ins[block.inputs[0]]))
        loss = ((out - torch.from_numpy(target[block.outputs[0]])) ** 2).mean()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
        w_name = ctx.graph.node(linears[0]).weights["weight"]
        with torch.no_grad():
            params[w_name].mul_(0.5)
        written = block.commit()
        assert w_name in written
        np.testing.assert_allclose(
            ctx.recipe.weights[w_name], 0.5 * np.asarray(ctx.graph.initializers[w_name]), rtol=1e-6
        )
        # the quantized model now runs the committed weights: a new block agrees with it
        again = ctx.block_problem(block.nodes)
        ins, want = next(
            zip(again.input_batches(), again.output_batches(quantized=True), strict=True)
        )
        (got,) = again.block.module(torch.from_numpy(ins[again.inputs[0]]))
        w = want[again.outputs[0]]
        np.testing.assert_allclose(got.detach().numpy(), w, atol=1e-5 * np.abs(w).max())

    run_with_blocks(quantfw_registry_with, look)


def test_substituted_weights_and_dropped_activations_give_the_float_block(quantfw_registry_with):
    """With every weight substituted by its float value and every activation quantizer dropped
    (p = 1), the block computes the float model's block; p = 0 is the simulation again."""

    def look(ctx, linears):
        block = ctx.block_problem(_between(ctx, linears[0], linears[1]))
        bm = block.block
        (x_name,), (y_name,) = block.inputs, block.outputs
        xf = next(block.input_batches(quantized=False))[x_name]
        yf = next(block.output_batches(quantized=False))[y_name]
        (quantized,) = bm.module(torch.from_numpy(xf))
        for name, p in bm.parameters.items():
            bm.substitute_weight(name, lambda p=p: p)
        bm.set_activation_drop(1.0)
        (got,) = bm.module(torch.from_numpy(xf))
        np.testing.assert_allclose(got.detach().numpy(), yf, rtol=1e-5, atol=1e-6)
        # half dropped: a seeded mix of both, repeatable
        for name in bm.parameters:
            bm.substitute_weight(name, None)
        bm.set_activation_drop(0.5, seed=3)
        (a,) = bm.module(torch.from_numpy(xf))
        bm.set_activation_drop(0.5, seed=3)
        (b,) = bm.module(torch.from_numpy(xf))
        assert torch.equal(a, b)
        assert not torch.equal(a, quantized)
        bm.set_activation_drop(0.0)
        (again,) = bm.module(torch.from_numpy(xf))
        assert torch.equal(again, quantized)
        with pytest.raises(KeyError, match="no weight of the block"):
            bm.substitute_weight("nothing", None)
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            bm.set_activation_drop(1.5)

    run_with_blocks(quantfw_registry_with, look)


def test_output_gradients_are_the_kl_gradient_in_closed_form(quantfw_registry_with):
    """For the last layer, whose output is the model's, the gradient of
    sum KL(softmax(float) || softmax(quantized)) is softmax(quantized) - softmax(float)."""

    def softmax(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def look(ctx, linears):
        block = ctx.block_problem([linears[-1]])
        (out,) = block.outputs
        assert out == ctx.graph.outputs[0]
        sim = ctx.frontend.simulate(ctx.model, ctx.graph, ctx.recipe)
        grads = list(block.output_gradients())
        floats = list(block.output_batches())
        assert len(grads) == len(floats) == 2
        for batch, g, f in zip(ctx.calibration, grads, floats, strict=True):
            q = sim(batch)[out]
            want = softmax(q) - softmax(f[out])
            assert np.abs(want).max() > 1e-4  # the quantized prediction does differ
            np.testing.assert_allclose(g[out], want, atol=1e-6)

    run_with_blocks(quantfw_registry_with, look)
