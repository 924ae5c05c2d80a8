"""A griffe extension: docstrings written for pytest's doctests, shown well by mkdocstrings.

tiertwin's docstrings hold runnable ``>>>`` examples (pytest runs them with
``--doctest-modules``) and Sphinx-style roles such as ``:class:`~pkg.mod.Name```.
Rendered as Markdown, a bare ``>>>`` line turns into a nested block quote and a role
shows up verbatim. Before a docstring is parsed, this extension fences every run of
doctest lines (the prompt lines and the output up to the next blank line) as
``pycon`` and turns each role into a code span of its target (``~`` keeps the last
name only, as Sphinx does). The source files are not touched.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def fence_doctests(text: str) -> str:
    r"""Fence bare doctest runs as ``pycon`` and turn Sphinx roles into code spans.

    >>> fence_doctests("Intro.\n\n" + ">" * 3 + " 1 + 1\n2\n\nSee :class:`~a.b.C`.").splitlines()
    ['Intro.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'See `C`.']
    """
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if in_doctest:
            if stripped:
                out.append(line)
                continue
            out.append(f"{indent}```")
            in_doctest = False
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
            in_doctest = True
        out.append(line if in_fence or in_doctest else _ROLE.sub(_role_to_code, line))
    if in_doctest:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Rewrite each docstring's text once, when griffe has loaded its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
