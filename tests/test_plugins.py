"""The plugin system, end to end with real pluggy and real importlib.metadata discovery.

Fake installed distributions are ``<name>-<version>.dist-info`` folders (METADATA plus
entry_points.txt) next to a module file in a temporary directory put on ``sys.path``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pluggy
import pytest

import quantfw.builtins
from quantfw.api import (
    AlgorithmInfo,
    BackendInfo,
    FrontendInfo,
    Stage,
    StageEvent,
    hookimpl,
    hookspecs,
)
from quantfw.plugins import (
    DEFAULT_PLUGINS,
    DISABLE_ENV_VAR,
    DuplicateComponentError,
    PluginError,
    QuantfwPluginManager,
    Registry,
    UnavailableComponentError,
    UnknownComponentError,
    build_registry,
    emit_progress,
    emit_stage,
    get_plugin_manager,
    get_registry,
    hook_names,
    make_plugin_manager,
    reset_plugin_manager,
    stage_events,
    use_plugin_manager,
)
from quantfw.target import TargetSpec
from quantfw.testing import check_plugin

MINIMAL_TARGET = {
    "name": "fake-target",
    "artifact": "onnx",
    "weight": {"dtype": "int8", "granularity": "per_channel"},
    "activation": {"dtype": "uint8", "symmetric": False},
    "bias": {"mode": "int32"},
    "ops": {"quantize": ["conv", "linear"]},
}

MINIMAL_TARGET_TOML = """\
name = "fake-toml-target"
artifact = "onnx"
[weight]
dtype = "int8"
granularity = "per_channel"
[activation]
dtype = "uint8"
symmetric = false
[bias]
mode = "int32"
[ops]
quantize = ["conv", "linear"]
"""

#: a fresh plugin manager around every test (tests/plugin_site.py)
pytestmark = pytest.mark.usefixtures("clean_plugin_state")


def good_source(prefix: str) -> str:
    """A plugin module registering ``<prefix>-frontend`` and ``<prefix>-algo``."""
    return f"""
        from quantfw.api import AlgorithmInfo, FrontendInfo, Stage
        from quantfw.api import hookimpl

        class Reader:
            def accepts(self, model):
                return model == {prefix!r}

        class Algo:
            def run(self, ctx):
                pass

        @hookimpl
        def quantfw_register_frontends(register):
            register(FrontendInfo({prefix + "-frontend"!r}, Reader))

        @hookimpl
        def quantfw_register_algorithms(register):
            register(AlgorithmInfo({prefix + "-algo"!r}, Stage.ROUND, Algo))
        """


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def install(site: Path) -> Callable[..., Path]:
    """``install(dist, module, source, ep_name=None, version="0.1")``: a fake distribution whose
    entry point ``ep_name`` (default: ``dist``) in group ``quantfw`` is module ``module``."""

    def install(
        dist: str, module: str, source: str, *, ep_name: str | None = None, version: str = "0.1"
    ) -> Path:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(
            f"[quantfw]\n{ep_name or dist} = {module}\n", encoding="utf-8"
        )
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        return info

    return install


def reports_by_name(registry: Registry) -> dict[str, object]:
    return {r.name: r for r in registry.plugins}


# ------------------------------------------------------------------------------------------------
# the hook contract
# ------------------------------------------------------------------------------------------------


def test_every_hook_is_documented_with_its_parameters() -> None:
    names = hook_names()
    assert set(names) == {
        "quantfw_register_frontends",
        "quantfw_register_algorithms",
        "quantfw_register_targets",
        "quantfw_register_backends",
        "quantfw_register_converters",
        "quantfw_register_engines",
        "quantfw_on_stage",
        "quantfw_on_progress",
    }
    for name in names:
        spec = getattr(hookspecs, name)
        doc = inspect.getdoc(spec) or ""
        for param in inspect.signature(spec).parameters:
            assert f":param {param}:" in doc, f"{name} does not document {param}"
        assert ":return:" in doc, name
        assert all(
            p.annotation is not inspect.Parameter.empty
            for p in inspect.signature(spec).parameters.values()
        ), name


def test_markers_belong_to_the_quantfw_project() -> None:
    assert hookspecs.hookimpl.project_name == "quantfw"
    assert hookspecs.hookspec.project_name == "quantfw"


def test_stage_event_validates() -> None:
    event = StageEvent("calibrate", "finished", "minmax", elapsed=0.5, context=object())
    assert event.stage is Stage.CALIBRATE
    with pytest.raises(ValueError, match="stage 'cook'"):
        StageEvent("cook", "started", "minmax")
    with pytest.raises(ValueError, match="phase"):
        StageEvent("round", "halfway", "nearest")
    with pytest.raises(ValueError, match="elapsed"):
        StageEvent("round", "started", "nearest", elapsed=1.0)


# ------------------------------------------------------------------------------------------------
# built-ins and in-process plugins
# ------------------------------------------------------------------------------------------------


def test_builtins_register_through_the_hooks() -> None:
    pm = make_plugin_manager(load_entrypoints=False)
    assert DEFAULT_PLUGINS == ("quantfw.builtins",)
    assert pm.get_plugin("quantfw.builtins") is quantfw.builtins
    registry = build_registry(pm)
    report = registry.report("quantfw.builtins")
    assert (report.status, report.distribution) == ("loaded", "quantfw")
    for kind, names in report.registers.items():
        for name in names:
            assert registry.origin(kind, name) == "quantfw.builtins"


def test_builtins_can_be_disabled() -> None:
    pm = make_plugin_manager(load_entrypoints=False, disabled=["quantfw.builtins"])
    registry = build_registry(pm)
    report = registry.report("quantfw.builtins")
    assert report.status == "blocked"
    assert "--disable-plugin" in report.reason
    assert registry.frontends == {} and registry.targets == {}


def test_throwaway_plugin_class(quantfw_plugin_manager: QuantfwPluginManager) -> None:
    class Throwaway:
        @hookimpl
        def quantfw_register_backends(self, register):
            register(BackendInfo("throwaway-backend", object, artifact_format="none"))

    quantfw_plugin_manager.register(Throwaway(), name="throwaway")
    registry = get_registry()  # the fixture made its manager the process-wide one
    assert registry.origin("backend", "throwaway-backend") == "throwaway"
    # generic names no backends: every backend writing its artifact format ("none") serves it
    assert [b.name for b in registry.backends_for("generic")] == ["throwaway-backend"]
    report = registry.report("throwaway")
    assert report.registers == {"backend": ["throwaway-backend"]}
    assert report.distribution == ""


def test_registry_follows_plugin_changes(quantfw_plugin_manager: QuantfwPluginManager) -> None:
    class Late:
        @hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("late-algo", "finalize", object))

    before = get_registry()
    assert get_registry() is before  # cached
    plugin = Late()
    quantfw_plugin_manager.register(plugin, name="late")
    assert "late-algo" in get_registry().algorithms
    quantfw_plugin_manager.unregister(plugin)
    assert "late-algo" not in get_registry().algorithms


def test_plugin_manager_is_cached_and_resettable() -> None:
    pm = get_plugin_manager()
    assert get_plugin_manager() is pm
    assert get_plugin_manager(disabled=["quantfw.builtins"]) is not pm
    pm2 = get_plugin_manager()
    assert pm2.is_blocked("quantfw.builtins")
    reset_plugin_manager()
    assert get_plugin_manager() is not pm2


# ------------------------------------------------------------------------------------------------
# entry-point discovery
# ------------------------------------------------------------------------------------------------


def test_installed_distribution_is_discovered(install) -> None:
    install("fakeplug", "fakeplug_mod", good_source("fake"))
    pm = make_plugin_manager()
    assert pm.get_plugin("fakeplug") is sys.modules["fakeplug_mod"]
    registry = build_registry(pm)
    report = registry.report("fakeplug")
    assert (report.status, report.distribution, report.version) == ("loaded", "fakeplug", "0.1")
    assert report.registers == {"frontend": ["fake-frontend"], "algorithm": ["fake-algo"]}
    assert registry.origin("frontends", "fake-frontend") == "fakeplug"
    assert registry.frontend_for("fake").name == "fake-frontend"
    json.dumps(registry.to_dict())  # ``quantfw plugins --json``
    assert report.to_dict()["status"] == "loaded"


def test_plugin_that_fails_to_import_is_reported(install, caplog) -> None:
    install("goodplug", "goodplug_mod", good_source("good"))
    install("brokenplug", "brokenplug_mod", "raise ImportError('needs libfoo')", version="2.3")
    with caplog.at_level(logging.WARNING, logger="quantfw.plugins"):
        registry = build_registry(make_plugin_manager())
    report = registry.report("brokenplug")
    assert (report.status, report.distribution, report.version) == ("failed", "brokenplug", "2.3")
    assert report.reason == "ImportError: needs libfoo"
    assert "brokenplug 2.3" in caplog.text and "needs libfoo" in caplog.text
    assert registry.report("goodplug").status == "loaded"
    assert "good-frontend" in registry.frontends


def test_plugin_whose_hook_raises_is_reported(install, caplog) -> None:
    install("goodplug", "goodplug_mod", good_source("good"))
    install(
        "raiseplug",
        "raiseplug_mod",
        """
        from quantfw.api import AlgorithmInfo
        from quantfw.api import hookimpl

        @hookimpl
        def quantfw_register_algorithms(register):
            register(AlgorithmInfo("raise-algo", "round", object))

        @hookimpl
        def quantfw_register_backends(register):
            raise RuntimeError("no licence file")
        """,
    )
    with caplog.at_level(logging.WARNING, logger="quantfw.plugins"):
        registry = build_registry(make_plugin_manager())
    report = registry.report("raiseplug")
    assert report.status == "failed"
    assert report.reason == "quantfw_register_backends: RuntimeError: no licence file"
    assert "raiseplug 0.1" in caplog.text
    assert "raise-algo" not in registry.algorithms  # a failed plugin keeps nothing
    assert registry.report("goodplug").status == "loaded"
    assert "good-algo" in registry.algorithms


def test_malformed_registrations_fail_the_plugin(quantfw_registry_with) -> None:
    class WrongType:
        @hookimpl
        def quantfw_register_frontends(self, register):
            register({"name": "dict-frontend"})

    class Returns:
        @hookimpl
        def quantfw_register_algorithms(self, register):
            return [AlgorithmInfo("returned", "round", object)]

    class Swallows:
        @hookimpl
        def quantfw_register_backends(self, register):
            try:
                register("not a backend")
            except TypeError:
                pass

    registry = quantfw_registry_with(WrongType(), Returns(), Swallows(), strict=False)
    wrong = registry.report("WrongType")
    assert wrong.status == "failed" and "FrontendInfo, not dict" in wrong.reason
    assert "call register(...)" in registry.report("Returns").reason
    assert "BackendInfo, not str" in registry.report("Swallows").reason
    with pytest.raises(PluginError, match="WrongType"):
        quantfw_registry_with()


# ------------------------------------------------------------------------------------------------
# blocking
# ------------------------------------------------------------------------------------------------


def blocked_source(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"


def test_env_var_blocks_before_import(install, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imported.txt"
    install("blockplug", "blockplug_mod", blocked_source(marker))
    install("goodplug", "goodplug_mod", good_source("good"))
    monkeypatch.setenv(DISABLE_ENV_VAR, "blockplug, something-else")
    pm = make_plugin_manager()
    assert not marker.exists()
    assert "blockplug_mod" not in sys.modules
    assert pm.is_blocked("blockplug")
    registry = build_registry(pm)
    report = registry.report("blockplug")
    assert report.status == "blocked"
    assert DISABLE_ENV_VAR in report.reason
    assert registry.report("goodplug").status == "loaded"


def test_argument_blocks_by_distribution_name(install, tmp_path) -> None:
    marker = tmp_path / "imported.txt"
    install("Block_Plug.Dist", "blockplug_mod", blocked_source(marker), ep_name="blockplug")
    pm = make_plugin_manager(disabled=["block-plug-dist"])  # names compare PEP 503-normalised
    assert not marker.exists()
    assert "blockplug_mod" not in sys.modules
    report = build_registry(pm).report("blockplug")
    assert (report.status, report.distribution) == ("blocked", "Block_Plug.Dist")
    assert "--disable-plugin" in report.reason
    # a blocked name stays blocked for later registrations too
    assert pm.register(object(), name="blockplug") is None


def test_star_blocks_every_entry_point_but_not_builtins(install, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imported.txt"
    install("blockplug", "blockplug_mod", blocked_source(marker))
    monkeypatch.setenv(DISABLE_ENV_VAR, "*")
    registry = build_registry(make_plugin_manager())
    assert not marker.exists()
    assert registry.report("blockplug").status == "blocked"
    assert registry.report("quantfw.builtins").status == "loaded"


def test_unknown_disabled_name_is_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="quantfw.plugins"):
        make_plugin_manager(disabled=["no-such-plugin"])
    assert "no-such-plugin" in caplog.text


# ------------------------------------------------------------------------------------------------
# duplicates and misspelt hooks
# ------------------------------------------------------------------------------------------------


def test_duplicate_component_names_name_both_plugins(install) -> None:
    install("firstplug", "firstplug_mod", good_source("same"))
    install("secondplug", "secondplug_mod", good_source("same"), version="1.5")
    pm = make_plugin_manager()
    with pytest.raises(DuplicateComponentError) as info:
        build_registry(pm, strict=True)
    message = str(info.value)
    for text in ("'same-frontend'", "firstplug 0.1", "secondplug 1.5", "'same-algo'"):
        assert text in message
    # the registry is still there for ``quantfw plugins`` to show
    registry = info.value.registry
    assert {c.name for c in registry.conflicts} == {"same-frontend", "same-algo"}
    assert registry.report("secondplug").registers["frontend"] == ["same-frontend"]
    # by default the later plugin is left out whole, and the first keeps working
    assert registry.report("secondplug").status == "failed"
    assert registry.origin("frontend", "same-frontend") == "firstplug"
    with use_plugin_manager(pm):
        with pytest.raises(DuplicateComponentError, match="same-frontend"):
            get_registry(strict=True)
        assert get_registry().conflicts


def test_duplicate_of_a_builtin_name(quantfw_registry_with) -> None:
    class Clash:
        @hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("minmax", "calibrate", object))

    with pytest.raises(DuplicateComponentError, match="algorithm 'minmax'.*quantfw.builtins"):
        quantfw_registry_with(Clash())


def test_check_pending_catches_a_misspelt_hook(quantfw_plugin_manager) -> None:
    class Misspelt:
        @hookimpl
        def quantfw_register_frontend(self, register):  # missing the final "s"
            pass

    quantfw_plugin_manager.register(Misspelt(), name="misspelt")
    with pytest.raises(
        pluggy.PluginValidationError,
        match="'misspelt'.*unknown hook 'quantfw_register_frontend'.*quantfw_register_frontends",
    ):
        quantfw_plugin_manager.check_pending()
    assert build_registry(quantfw_plugin_manager).report("misspelt").status == "failed"


def test_misspelt_hook_in_installed_plugin_is_reported(install) -> None:
    install(
        "typoplug",
        "typoplug_mod",
        """
        from quantfw.api import hookimpl

        @hookimpl
        def quantfw_register_frontend(register):
            pass
        """,
    )
    install("goodplug", "goodplug_mod", good_source("good"))
    pm = make_plugin_manager()  # check_pending passes: the bad plugin was taken out
    report = build_registry(pm).report("typoplug")
    assert report.status == "failed"
    assert "did you mean 'quantfw_register_frontends'" in report.reason
    assert pm.get_plugin("typoplug") is None
    assert pm.get_plugin("goodplug") is not None


def test_hook_with_unknown_argument_is_reported(install) -> None:
    install(
        "argplug",
        "argplug_mod",
        """
        from quantfw.api import hookimpl

        @hookimpl
        def quantfw_register_backends(register, extra):
            pass
        """,
    )
    report = build_registry(make_plugin_manager()).report("argplug")
    assert report.status == "failed"
    assert "extra" in report.reason


# ------------------------------------------------------------------------------------------------
# lookups and availability
# ------------------------------------------------------------------------------------------------


class Unavailable:
    @hookimpl
    def quantfw_register_algorithms(self, register):
        register(
            AlgorithmInfo(
                "needs-xyz",
                "round",
                object,
                requires=("no_such_module_xyz",),
                install_hint="pip install xyz",
            )
        )

    @hookimpl
    def quantfw_register_frontends(self, register):
        register(FrontendInfo("xyz-frontend", object, requires=("no_such_module_xyz",)))


def test_unavailable_components_are_listed_with_reasons(quantfw_registry_with) -> None:
    registry = quantfw_registry_with(Unavailable())
    rows = {(s.kind, s.name): s for s in registry.statuses()}
    row = rows[("algorithm", "needs-xyz")]
    assert not row.available
    assert row.reason == "needs no_such_module_xyz installed (pip install xyz)"
    assert row.plugin == "Unavailable"
    assert rows[("algorithm", "minmax")].available
    with pytest.raises(UnavailableComponentError, match="needs-xyz.*no_such_module_xyz"):
        registry.algorithm("needs-xyz")
    assert registry.algorithm("needs-xyz", check_available=False).name == "needs-xyz"
    assert registry.availability("frontend", "xyz-frontend")[0] is False


def test_unknown_names_list_what_is_known(quantfw_registry_with) -> None:
    registry = quantfw_registry_with()
    with pytest.raises(
        UnknownComponentError,
        match=r"unknown target 'generik' \(did you mean "
        r"'generic'\?\); known targets: .*generic",
    ):
        registry.target("generik")
    with pytest.raises(UnknownComponentError, match="known algorithms: .*minmax"):
        registry.algorithm("gptq-xl")
    with pytest.raises(UnknownComponentError, match="no backend named"):
        registry.origin("backend", "nothing")
    with pytest.raises(UnknownComponentError, match="known targets"):
        registry.backends_for("no-such-target")
    with pytest.raises(ValueError, match="unknown component kind"):
        registry.components("widget")


def test_frontend_for_explains_who_was_asked(quantfw_registry_with) -> None:
    class Picky:
        def accepts(self, model):
            return isinstance(model, dict)

    class Plugin:
        @hookimpl
        def quantfw_register_frontends(self, register):
            register(FrontendInfo("picky", Picky, suffixes=(".pick",)))

    registry = quantfw_registry_with(Plugin(), Unavailable())
    assert registry.frontend_for({}).name == "picky"
    assert registry.frontend_object("picky") is registry.frontend_object("picky")
    with pytest.raises(UnknownComponentError) as info:
        registry.frontend_for(3.5)
    message = str(info.value)
    assert "builtins.float" in message
    assert "picky reads .pick" in message
    assert "xyz-frontend (unavailable: needs no_such_module_xyz" in message
    assert "graph" in message


def test_backends_for_a_target(quantfw_registry_with) -> None:
    """A target chooses its backends: the ones it names, in its order, or else every backend
    that writes its artifact format."""

    class Backends:
        @hookimpl
        def quantfw_register_backends(self, register):
            register(BackendInfo("sim-backend", object, artifact_format="onnx"))
            register(
                BackendInfo(
                    "xyz-backend", object, artifact_format="onnx", requires=("no_such_xyz",)
                )
            )
            register(BackendInfo("lite-backend", object, artifact_format="tflite"))

        @hookimpl
        def quantfw_register_targets(self, register):
            register(TargetSpec.from_dict(MINIMAL_TARGET))  # artifact onnx, no backends named
            named = dict(MINIMAL_TARGET, name="picky-target")
            named["backends"] = ["xyz-backend", "missing-backend", "lite-backend"]
            register(TargetSpec.from_dict(named))

    registry = quantfw_registry_with(Backends())
    spec = registry.target("fake-target")
    assert [b.name for b in registry.backends_for(spec)] == ["sim-backend", "xyz-backend"]
    assert [b.name for b in registry.backends_for("fake-target", available_only=True)] == [
        "sim-backend"
    ]
    # named backends win over the artifact format, in the target's order of preference
    assert [b.name for b in registry.backends_for("picky-target")] == [
        "xyz-backend",
        "lite-backend",
    ]
    assert registry.missing_backends("picky-target") == ["missing-backend"]
    assert registry.missing_backends("fake-target") == []


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------


def test_targets_register_as_specs_or_toml_files(quantfw_registry_with, tmp_path) -> None:
    path = tmp_path / "fake.toml"
    path.write_text(MINIMAL_TARGET_TOML, encoding="utf-8")

    class Targets:
        @hookimpl
        def quantfw_register_targets(self, register):
            register(TargetSpec.from_dict(MINIMAL_TARGET))
            register(path)

    registry = quantfw_registry_with(Targets())
    assert registry.target("fake-target").artifact == "onnx"
    assert registry.target("fake-toml-target").source == str(path)
    assert registry.report("Targets").registers == {"target": ["fake-target", "fake-toml-target"]}


def test_bad_target_registrations_fail_the_plugin(quantfw_registry_with, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n', encoding="utf-8")

    class BadFile:
        @hookimpl
        def quantfw_register_targets(self, register):
            register(bad)

    class Relative:
        @hookimpl
        def quantfw_register_targets(self, register):
            register("targets/mine.toml")

    registry = quantfw_registry_with(BadFile(), Relative(), strict=False)
    assert "TargetSpecError" in registry.report("BadFile").reason
    assert str(bad) in registry.report("BadFile").reason
    assert "is relative" in registry.report("Relative").reason
    assert "bad" not in registry.targets


# ------------------------------------------------------------------------------------------------
# events
# ------------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[StageEvent] = []
        self.progress: list[tuple[str, int, int | None]] = []

    @hookimpl
    def quantfw_on_stage(self, event):
        self.events.append(event)

    @hookimpl
    def quantfw_on_progress(self, task, done, total):
        self.progress.append((task, done, total))


class Crashing:
    @hookimpl(tryfirst=True)
    def quantfw_on_progress(self, task, done):
        raise RuntimeError("observer bug")


def test_observers_receive_events(quantfw_plugin_manager) -> None:
    recorder = Recorder()
    quantfw_plugin_manager.register(recorder, name="recorder")
    context = object()
    with stage_events("calibrate", "minmax", context=context):
        emit_progress("calibrate: minmax", 1, 4)
    emit_progress("layers", 3)
    started, finished = recorder.events
    assert (started.stage, started.phase) == (Stage.CALIBRATE, "started")
    assert started.algorithm == "minmax"
    assert started.elapsed is None and started.context is context
    assert finished.phase == "finished" and finished.elapsed >= 0
    assert recorder.progress == [("calibrate: minmax", 1, 4), ("layers", 3, None)]
    event = emit_stage(Stage.ROUND, "started", "nearest")
    assert recorder.events[-1] is event


def test_no_finished_event_when_the_stage_raises(quantfw_plugin_manager) -> None:
    recorder = Recorder()
    quantfw_plugin_manager.register(recorder, name="recorder")
    with pytest.raises(ZeroDivisionError), stage_events("round", "nearest"):
        1 / 0  # noqa: B018
    assert [e.phase for e in recorder.events] == ["started"]


def test_a_failing_observer_is_a_warning_not_a_crash(quantfw_plugin_manager, caplog) -> None:
    recorder = Recorder()
    quantfw_plugin_manager.register(recorder, name="recorder")
    quantfw_plugin_manager.register(Crashing(), name="crashing")
    with caplog.at_level(logging.DEBUG, logger="quantfw.plugins"):
        emit_progress("task", 1, 2)
        emit_progress("task", 2, 2)
    assert recorder.progress == [("task", 1, 2), ("task", 2, 2)]  # still called after the crash
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per plugin and hook; repeats go to debug
    assert "'crashing'" in warnings[0].getMessage()
    assert "observer bug" in caplog.text


# ------------------------------------------------------------------------------------------------
# the plugin-author kit
# ------------------------------------------------------------------------------------------------


def test_check_plugin_accepts_conforming_plugins() -> None:
    assert check_plugin(quantfw.builtins) == []
    assert check_plugin(Unavailable()) == []  # unavailable here is not a defect
    assert check_plugin(Recorder()) == []


def test_deep_check_builds_components_and_checks_their_protocols() -> None:
    class Lax:
        def __init__(self, **options):  # swallows a misspelt option
            pass

        def run(self, ctx):
            pass

    class NoCtx:
        def run(self):
            pass

    class BadFrontend:
        def accepts(self, model):
            return False

        def load(self, path):
            return None

        def capture(self, model, extra):  # an argument the pipeline never passes
            return None

        def collect(self, model, graph, tensors, batches):  # no weights=/recipe=
            return iter(())

        def simulate(self, model, graph, recipe):
            return None

    class Plugin:
        @hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("lax", "finalize", Lax))
            register(AlgorithmInfo("no-ctx", "finalize", NoCtx))

        @hookimpl
        def quantfw_register_frontends(self, register):
            register(FrontendInfo("bad-fe", BadFrontend))

    assert check_plugin(Plugin()) == []  # the shallow check builds nothing
    problems = "\n".join(check_plugin(Plugin(), deep=True))
    assert "algorithm 'lax': factory() accepted the unknown option" in problems
    assert "algorithm 'no-ctx': run() must take a positional argument 'ctx'" in problems
    assert "frontend 'bad-fe': capture() requires an argument 'extra'" in problems
    assert "frontend 'bad-fe': collect() must take the keyword argument 'weights'" in problems
    assert "frontend 'bad-fe': collect() must take the keyword argument 'recipe'" in problems


def test_check_plugin_finds_problems(tmp_path) -> None:
    class Unmarked:
        def quantfw_register_frontends(self, register):
            pass

    class Typo:
        @hookimpl
        def quantfw_register_algorithm(self, register):
            pass

    class BadName:
        @hookimpl
        def quantfw_register_frontends(self, register):
            register(FrontendInfo("Bad Name", object))

    class Twice:
        @hookimpl
        def quantfw_register_backends(self, register):
            register(BackendInfo("twice", object, artifact_format="onnx"))
            register(BackendInfo("twice", object, artifact_format="onnx"))

    class Wrapper:
        @hookimpl(wrapper=True)
        def quantfw_on_stage(self, event):
            return (yield)

    class ClashWithBuiltin:
        @hookimpl
        def quantfw_register_algorithms(self, register):
            register(AlgorithmInfo("nearest", "round", object))

    class NotCallable:
        @hookimpl
        def quantfw_register_frontends(self, register):
            register(FrontendInfo("not-callable", "a string"))

    assert check_plugin(object()) == ["implements no quantfw hook"]
    assert check_plugin(Unmarked()) == [
        "quantfw_register_frontends lacks @quantfw.hookimpl, so it is never called",
        "implements no quantfw hook",
    ]
    (problem,) = check_plugin(Typo())
    assert "unknown hook 'quantfw_register_algorithm'" in problem
    assert "did you mean 'quantfw_register_algorithms'" in problem
    (problem,) = check_plugin(BadName())
    assert "ComponentError" in problem and "'Bad Name' is invalid" in problem
    (problem,) = check_plugin(Twice())
    assert "backend 'twice' is registered twice" in problem
    (problem,) = check_plugin(Wrapper())
    assert "quantfw_on_stage is a wrapper" in problem
    (problem,) = check_plugin(ClashWithBuiltin())
    assert "'nearest'" in problem and "quantfw.builtins" in problem
    (problem,) = check_plugin(NotCallable())
    assert "factory 'a string' is not callable" in problem


def test_registry_with_fixture_installs_its_manager(quantfw_registry_with) -> None:
    registry = quantfw_registry_with(Unavailable())
    assert get_plugin_manager() is registry.plugin_manager
    assert "needs-xyz" in get_registry().algorithms  # code under test sees the plugin


def test_conversions_chain_and_hand_backends_the_captured_form(quantfw_registry_with) -> None:
    """Converters chain by format; a backend gets the graph's recorded form, a form reached by
    name-keeping conversions, or a clear error; 'qgraph' is the graph itself."""
    from quantfw import ConverterInfo, QuantGraph
    from quantfw.plugins import ConversionError

    class Tag:
        def __init__(self, fmt: str) -> None:
            self.fmt = fmt

        def convert(self, model, **options):
            return (*model, self.fmt, *sorted(options))

    class Plugin:
        @hookimpl
        def quantfw_register_converters(self, register):
            register(ConverterInfo("a-to-b", "fmt-a", "fmt-b", lambda: Tag("b"), keeps_names=True))
            register(ConverterInfo("b-to-c", "fmt-b", "fmt-c", lambda: Tag("c")))
            register(
                ConverterInfo(
                    "c-to-d", "fmt-c", "fmt-d", lambda: Tag("d"), requires=("no_such_xyz",)
                )
            )

    registry = quantfw_registry_with(Plugin())
    assert [c.name for c in registry.conversion_path("fmt-a", "fmt-c")] == ["a-to-b", "b-to-c"]
    assert registry.convert(("m",), "fmt-a", "fmt-c", opt=1) == ("m", "b", "opt", "c")
    with pytest.raises(
        ConversionError, match="no installed conversion leads from fmt-a to fmt-d"
    ) as err:
        registry.convert(("m",), "fmt-a", "fmt-d")
    assert "c-to-d: needs no_such_xyz installed" in str(err.value)

    g = QuantGraph([], ["x"], ["x"], forms={"fmt-a": ("captured",)})
    assert registry.model_in(["fmt-z", "fmt-a"], g) == ("fmt-a", ("captured",))
    assert registry.model_in(["fmt-b"], g) == ("fmt-b", ("captured", "b"))  # keeps names
    assert registry.model_in(["qgraph"], g) == ("qgraph", g)
    with pytest.raises(ConversionError, match="needs to be in fmt-c form.*recorded fmt-a"):
        registry.model_in(["fmt-c"], g)  # b-to-c renames tensors: never used for lowering
