"""Reading target spec files: any TOML file, and the ones shipped in ``quantfw/target/targets/``."""

from __future__ import annotations

import os
from pathlib import Path

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

from .reader import TargetSpecError
from .spec import TargetSpec

_BUILTIN_DIR = Path(__file__).with_name("targets")


def load_target(path: str | os.PathLike[str]) -> TargetSpec:
    """Read and validate a target spec TOML file.

    :raises TargetSpecError: the file cannot be read, is not valid TOML, or breaks the schema;
        the message names the file.
    """
    source = os.fspath(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise TargetSpecError(f"{source}: reading TOML needs Python >= 3.11 or the tomli package")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TargetSpecError(f"{source}: cannot read target spec: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TargetSpecError(f"{source}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetSpecError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array / inline table
        raise TargetSpecError(
            f"{source}: invalid TOML: arrays or tables nested too deeply to read"
        ) from None
    return TargetSpec.from_dict(data, source=source)


def builtin_target_paths() -> list[Path]:
    """The target spec files shipped in ``quantfw/target/targets/``, sorted by name."""
    if not _BUILTIN_DIR.is_dir():  # pragma: no cover - broken install
        return []
    return sorted(_BUILTIN_DIR.glob("*.toml"))
