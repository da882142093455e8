"""docs/contract.md is the contract's docstrings, rendered: the two cannot drift apart."""

from pathlib import Path

from quantfw.api import hookspecs, protocols
from quantfw.api.reference import render
from quantfw.plugins import hook_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "contract.md"


def test_contract_reference_is_generated_from_the_code():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/contract.md is stale: regenerate it with "
        "`python -m quantfw.api.reference > docs/contract.md`"
    )


def test_every_hook_and_protocol_method_is_in_the_reference():
    text = render()
    for name in hook_names():
        assert f"### `{name}(" in text, name
        assert hookspecs.__doc__ and name in hookspecs.__all__
    for proto in (protocols.Frontend, protocols.Backend, protocols.Converter):
        for member in vars(proto):
            if not member.startswith("_") and callable(getattr(proto, member)):
                assert f"- `{member}(" in text, (proto.__name__, member)
