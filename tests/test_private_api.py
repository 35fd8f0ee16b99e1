"""aiohttp's private API stays inside balancer/http/ (its docstring says what it uses and why),
so an aiohttp upgrade is checked there.

Outside balancer/http/, a module may import `aiohttp` and `aiohttp.web` only, and take from
them (`from ... import`, or `aiohttp.X` / `web.X`) only the names each lists as public in its
`__all__` (and `aiohttp.web` itself): never a private module such as aiohttp.web_protocol or
aiohttp.http_parser, never a name starting with `_`. Nor may it subclass an aiohttp class
other than an exception: a subclass of RequestHandler, Server, Response or a runner or site
works through their internals. (A private attribute of an aiohttp object, `request._message`,
is beyond what a walk of the syntax can tell from our own: balancer/http/ reads those too, and
review keeps them there.)"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import balancer

PACKAGE = Path(balancer.__file__).resolve().parent
INSIDE = PACKAGE / "http"

# The aiohttp modules code outside balancer/http/ may import, each with the names it may take
# from it: what the module lists as its public API.
PUBLIC: dict[str, frozenset[str]] = {
    "aiohttp": frozenset(aiohttp.__all__) | {"web"},
    "aiohttp.web": frozenset(web.__all__),
}


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the aiohttp module or object it is bound to (`web` -> aiohttp.web)."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "aiohttp":
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound["aiohttp"] = "aiohttp"  # `import aiohttp.web` binds aiohttp
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "aiohttp":
                for alias in node.names:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _dotted(node: ast.expr, bound: dict[str, str]) -> str | None:
    """`web.Server` -> "aiohttp.web.Server" when `web` is bound to aiohttp.web; else None."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        parent = _dotted(node.value, bound)
        return f"{parent}.{node.attr}" if parent is not None else None
    return None


def _public(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return module in PUBLIC and name in PUBLIC[module] and not name.startswith("_")


def _is_exception(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(found, type) and issubclass(found, BaseException)


def private_uses(source: str) -> list[str]:
    """What `source` takes from aiohttp beyond its public API, one line each."""
    tree = ast.parse(source)
    bound = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "aiohttp" and alias.name not in PUBLIC:
                    found.append(f"{line}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "aiohttp":
                continue
            for alias in node.names:
                if not _public(f"{node.module}.{alias.name}"):
                    found.append(f"{line}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            parent = _dotted(node.value, bound)
            if parent in PUBLIC and not _public(f"{parent}.{node.attr}"):
                found.append(f"{line}: {parent}.{node.attr}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                dotted = _dotted(base, bound)
                if dotted is not None and not _is_exception(dotted):
                    found.append(f"{line}: class {node.name} subclasses {dotted}")
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_balancer_http_uses_aiohttps_private_api() -> None:
    outside = [path for path in _modules() if INSIDE not in path.parents]
    assert len(outside) > 40  # the walk found the package
    problems = [
        f"{path.relative_to(PACKAGE.parent)}:{use}"
        for path in outside
        for use in private_uses(path.read_text(encoding="utf-8"))
    ]
    assert problems == [], "aiohttp's private API outside balancer/http/:\n" + "\n".join(problems)


def test_balancer_http_is_where_it_is_used() -> None:
    """The check sees the private uses there are (it is not passing for want of looking)."""
    using = {
        path.name
        for path in _modules()
        if INSIDE in path.parents and private_uses(path.read_text(encoding="utf-8"))
    }
    assert {"front.py", "loop.py", "mend.py", "admin_server.py", "site.py", "parser.py"} <= using


@pytest.mark.parametrize(
    "source",
    [
        "from aiohttp.web_protocol import RequestHandler",
        "from aiohttp.http_parser import RawRequestMessage",
        "from aiohttp import web_protocol",
        "from aiohttp import helpers",
        "import aiohttp.streams",
        "import aiohttp.http_writer as writer",
        "from aiohttp.web import _run_app",
        "from aiohttp import web\nweb._run_app",
        "import aiohttp\naiohttp.helpers.ceil_timeout",
        "from aiohttp import web\nclass H(web.RequestHandler): pass",
        "from aiohttp import web\nclass S(web.BaseSite): pass",
        "from aiohttp.web import Response\nclass R(Response): pass",
    ],
)
def test_private_uses_are_found(source: str) -> None:
    assert private_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        "import aiohttp\nfrom aiohttp import web",
        "import aiohttp.web",
        "from aiohttp import ClientSession, HttpVersion, hdrs, web",
        "from aiohttp.web import Application, BaseRequest",
        "import aiohttp\naiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())",
        "from aiohttp import web\nweb.json_response({}).force_close()",
        "from aiohttp import web\nclass Gone(web.HTTPException): pass",
    ],
)
def test_public_uses_pass(source: str) -> None:
    assert private_uses(source) == []
