"""One docstring style across the package: Google style, the one mkdocstrings renders (``docstring_style:
google`` in ``mkdocs.yml``).

Every docstring of ``metalearn`` (modules, classes, functions and methods, public or private, nested functions
included) is checked statically, without importing the package:

* no reStructuredText / Sphinx field or role (``:param x:``, ``:returns:``, ``:rtype:``, ``:class:`X```,
  ``:func:`f```, ...): cross-references are mkdocstrings links, parameters go under ``Args:``;
* no numpy-style section (a ``Parameters`` / ``Returns`` / ... heading underlined with dashes);
* a function or method with two or more parameters (besides ``self`` / ``cls``) whose docstring runs over more
  than one line has an ``Args:`` section (griffe's Google parser finds a parameters section); a one-line
  docstring may stay a sentence;
* griffe parses every docstring without a warning other than a missing type (an ``Args:`` entry naming a
  parameter the signature does not have, a line it cannot read as ``name: description``), private ones too,
  which the strict site build does not render.

The offending objects are reported by their qualified names.
"""
from __future__ import annotations

import ast
import logging
import re
import textwrap
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "metalearn"

#: reStructuredText field lists (``:param x:``, ``:returns:``, ``:raises ValueError:``, ...) at a line start
SPHINX_FIELD = re.compile(
    r"^\s*:(?:param|parameter|arg|argument|key|keyword|kwarg|kwparam|type|returns?|rtype|raises?|except|"
    r"exception|yields?|ytype|ivar|cvar|var|vartype|meta)\b[^:\n]*:", re.M)
#: Sphinx roles (``:class:`X```, ``:py:func:`f```, ...)
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|obj|data|const|ref|doc|term|any):`")
#: numpy-style section headings: a section name underlined with dashes
NUMPY_SECTION = re.compile(
    r"^\s*(?:Parameters|Other Parameters|Arguments|Returns|Yields|Receives|Raises|Warns|Warnings|See Also|Notes|"
    r"References|Examples?|Attributes|Methods)\s*\n\s*-{3,}\s*$", re.M)
#: griffe warnings that do not concern the style (types come from the annotations where there are any)
IGNORED_WARNINGS = ("No type or annotation for",)


def _docstrings(root: Path, package: str):
    """``(qualified name, docstring)`` of every module, class and function under ``root/package``, nested
    functions and classes included, read with ``ast``."""
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node, prefix):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield prefix, doc
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    yield from visit(child, f"{prefix}.{child.name}")
                elif not isinstance(child, ast.expr):   # defs inside if/try/with blocks
                    for sub in ast.iter_child_nodes(child):
                        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                            yield from visit(sub, f"{prefix}.{sub.name}")

        yield from visit(tree, module)


def markup_offenders(root: Path = ROOT, package: str = PACKAGE) -> dict[str, list[str]]:
    """``{qualified name: [what is wrong]}`` for docstrings with Sphinx fields or roles or numpy sections."""
    bad: dict[str, list[str]] = {}
    for name, doc in _docstrings(root, package):
        found = [f"Sphinx field {m.group(0).strip()!r}" for m in SPHINX_FIELD.finditer(doc)]
        found += [f"Sphinx role {m.group(0)!r}" for m in SPHINX_ROLE.finditer(doc)]
        found += [f"numpy section {m.group(0).split()[0]!r}" for m in NUMPY_SECTION.finditer(doc)]
        if found:
            bad.setdefault(name, []).extend(found)
    return bad


def _walk(obj):
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield member
        if member.is_module or member.is_class:
            yield from _walk(member)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def args_offenders(root: Path = ROOT, package: str = PACKAGE) -> tuple[list[str], list[str]]:
    """Functions and methods with two or more parameters and a multi-line docstring but no ``Args:`` section,
    and the warnings griffe's Google parser gives on any docstring (missing types left out)."""
    loaded = griffe.load(package, search_paths=[str(root)], docstring_parser="google", allow_inspection=False)
    handler, logger = _Collect(), logging.getLogger("griffe")
    logger.addHandler(handler)
    try:
        no_args = []
        for obj in [loaded, *_walk(loaded)]:
            if obj.docstring is None:
                continue
            sections = obj.docstring.parsed                      # parsing logs griffe's warnings
            if not obj.is_function:
                continue
            params = [p.name for p in obj.parameters if p.name not in ("self", "cls")]
            multi_line = "\n" in obj.docstring.value.strip()
            if len(params) >= 2 and multi_line and not any(s.kind.value == "parameters" for s in sections):
                no_args.append(obj.path)
    finally:
        logger.removeHandler(handler)
    warnings = [m for m in handler.messages if not any(w in m for w in IGNORED_WARNINGS)]
    return no_args, warnings


# ------------------------------------------------------------------------------------------- the package

def test_no_sphinx_or_numpy_markup():
    bad = markup_offenders()
    assert not bad, ("docstrings in reStructuredText / numpy style (write Google style: Args:, Returns:, "
                     "Raises:, and mkdocstrings links [`name`][module.name] for cross-references): "
                     + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(bad.items())))


def test_multi_parameter_functions_document_args():
    no_args, warnings = args_offenders()
    assert not no_args, ("functions and methods with two or more parameters and a multi-line docstring but no "
                         "Args: section (one line per parameter, 'name: meaning'): " + ", ".join(no_args))
    assert not warnings, "docstrings griffe's Google parser reads with a warning:\n  " + "\n  ".join(warnings)


# ----------------------------------------------------------------------------------- the checks themselves

BAD_MODULE = '''
"""A module.

Parameters
----------
x : int
"""


def sphinx_fields(a, b):
    """Add.

    :param a: one
    :returns: the sum
    """


def sphinx_role():
    """See :class:`Thing`."""


def prose(a, b):
    """Add ``a`` and ``b``.

    ``a`` is the first number and ``b`` the second.
    """


def wrong_name(a, b):
    """Add.

    Args:
        a: One.
        c: Not a parameter.
    """


def good(a, b):
    """Add.

    Args:
        a: One.
        b: The other.
    """


def one_line(a, b):
    """``a + b``."""


class Box:
    """A box."""

    def method(self, a, b):
        """Put.

        ``a`` goes in, ``b`` stays out.
        """

    def helper(self, a):
        """Put ``a``.

        Nothing else.
        """


def outer():
    def nested(a, b):
        """Nested.

        :param a: one
        """
    return nested
'''


@pytest.fixture
def bad_package(tmp_path):
    pkg = tmp_path / "badpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A package."""\n')
    (pkg / "mod.py").write_text(textwrap.dedent(BAD_MODULE))
    return tmp_path


def test_checks_catch_bad_docstrings(bad_package):
    bad = markup_offenders(bad_package, "badpkg")
    assert set(bad) == {"badpkg.mod", "badpkg.mod.sphinx_fields", "badpkg.mod.sphinx_role",
                        "badpkg.mod.outer.nested"}
    no_args, warnings = args_offenders(bad_package, "badpkg")
    assert sorted(no_args) == ["badpkg.mod.Box.method", "badpkg.mod.prose", "badpkg.mod.sphinx_fields"]
    assert any("'c'" in w for w in warnings) and len(warnings) == 1
