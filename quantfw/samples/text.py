"""Real English sentences from the docstrings of Python's own standard library.

The text ships with every Python (nothing is downloaded).  The sentences come in a fixed,
deterministic order, so calibration and evaluation sets can be drawn disjoint from each other.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import warnings

import numpy as np

__all__ = ["DOCSTRING_MODULES", "docstring_sentences", "sentence_pool"]

#: Standard-library modules whose docstrings (module, public classes, functions and methods) feed
#: :func:`docstring_sentences`, in this order.  A module missing from a Python build is skipped.
DOCSTRING_MODULES = (
    "json",
    "collections",
    "pathlib",
    "argparse",
    "functools",
    "itertools",
    "os",
    "re",
    "subprocess",
    "threading",
    "logging",
    "asyncio",
    "email.message",
    "http.client",
    "http.server",
    "urllib.request",
    "urllib.parse",
    "unittest",
    "typing",
    "dataclasses",
    "inspect",
    "textwrap",
    "string",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "heapq",
    "bisect",
    "shutil",
    "tempfile",
    "zipfile",
    "tarfile",
    "csv",
    "configparser",
    "socket",
    "selectors",
    "concurrent.futures",
    "multiprocessing",
    "pickle",
    "copy",
    "enum",
    "abc",
    "contextlib",
    "io",
    "codecs",
    "difflib",
    "pprint",
    "calendar",
    "locale",
    "gettext",
    "optparse",
    "queue",
    "sched",
    "xml.etree.ElementTree",
    "html.parser",
    "smtplib",
    "ftplib",
    "imaplib",
    "pydoc",
    "doctest",
    "trace",
    "timeit",
    "ast",
    "dis",
    "tokenize",
    "weakref",
    "warnings",
    "traceback",
    "numbers",
    "operator",
    "glob",
    "fnmatch",
    "gzip",
    "bz2",
    "lzma",
    "hashlib",
    "hmac",
    "secrets",
    "uuid",
    "base64",
    "struct",
    "array",
    "mailbox",
    "mimetypes",
    "platform",
    "getopt",
    "shlex",
    "cmd",
    "sqlite3",
    "wave",
    "zoneinfo",
    "ipaddress",
    "netrc",
    "plistlib",
    "filecmp",
    "fileinput",
)

_MIN_WORDS, _MAX_WORDS = 6, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[A-Za-z]?[.,;:!?)]*$")
# markup or code that makes a "sentence" not plain English
_REJECT = re.compile(
    r">>>|::|[{}\[\]<>=|\\@#$%^*~_/]|\.\.\.|`|\b[a-z]+\.[a-z]+\(|\(\)|https?:|e\.g\b|i\.e\b"
)


def _docstrings(module_name: str):
    try:
        mod = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a missing or broken stdlib module is simply skipped
        return
    yield mod.__doc__
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = vars(mod)[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != mod.__name__:
            continue  # re-exported from elsewhere: seen (or not) under its own module
        yield obj.__doc__
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if attr.startswith("_"):
                    continue
                member = vars(obj)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    yield member.__doc__


def _sentences(doc: str):
    """Plain prose sentences of one docstring: paragraphs of text, no code or field lists."""
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = para.splitlines()
        if not lines or any(
            ln.startswith((" ", "\t", ">>>", "...", ":", "-", "*", "+", "|")) for ln in lines
        ):
            continue  # code examples, indented blocks, field lists, bullet lists, tables
        text = " ".join(ln.strip() for ln in lines)
        for s in _SENTENCE_END.split(text):
            s = s.strip()
            if not s or s[0] not in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" or not s.endswith("."):
                continue
            words = s.split()
            if not (_MIN_WORDS <= len(words) <= _MAX_WORDS) or _REJECT.search(s):
                continue
            plain = sum(1 for w in words if _WORD.match(w.strip("\"'(")))
            if plain < 0.85 * len(words):  # mostly real words, not identifiers and numbers
                continue
            yield s


@functools.lru_cache(maxsize=1)
def sentence_pool() -> tuple[str, ...]:
    """Every usable sentence, deduplicated, in a fixed order (module list, then sorted names).

    The pool depends only on the Python version (its docstrings); it has a few thousand entries.
    """
    seen: dict[str, None] = {}
    with warnings.catch_warnings():  # some stdlib names warn on access (typing.re, ...)
        warnings.simplefilter("ignore")
        for module_name in DOCSTRING_MODULES:
            for doc in _docstrings(module_name):
                if isinstance(doc, str) and doc.strip():
                    for s in _sentences(doc):
                        seen.setdefault(s, None)
    return tuple(seen)


def docstring_sentences(n: int, seed: int = 0, offset: int = 0) -> list[str]:
    """``n`` real English sentences (6 to 40 words) from the standard library's docstrings.

    The pool (:func:`sentence_pool`) is shuffled with ``seed`` and ``pool[offset:offset + n]``
    returned, so for one seed, calls whose ``[offset, offset + n)`` ranges do not overlap return
    disjoint sentences: e.g. calibration ``(128, seed, 0)`` and evaluation ``(512, seed, 128)``.

    :raises ValueError: when the pool has fewer than ``offset + n`` sentences.
    """
    if n < 0 or offset < 0:
        raise ValueError(f"n and offset must be >= 0 (got n={n}, offset={offset})")
    pool = sentence_pool()
    if offset + n > len(pool):
        raise ValueError(
            f"asked for sentences {offset}..{offset + n} but the docstring pool has only {len(pool)}"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[offset : offset + n]]
