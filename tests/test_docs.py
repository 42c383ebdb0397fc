"""The reference in ``docs/`` keeps up with the code: every endpoint of the OpenAPI document,
every setting, command and method has its entry, each endpoint names the scope its route
requires, and the links between the pages resolve."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi import FastAPI
from fastapi.routing import APIRoute

from mixers import methods
from mixopt.cli import app as cli_app
from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore
from service.store.sql import make_engine

DOCS = Path(__file__).resolve().parent.parent / "docs"
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.M)
ENDPOINT_HEADING = re.compile(r"^### ([A-Z]+) (/\S*)$", re.M)
SCOPE_LINE = re.compile(r"^\*\*Scope:\*\* (?:`(\w+)`|none)", re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    # Building the OpenAPI document touches no table, so the database is never migrated.
    url = f"sqlite:///{tmp_path_factory.mktemp('docs')}/docs.db"
    store = SqlStore(make_engine(url))
    yield create_app(Settings(database_url=url), store)
    store.close()


def _operations(app: FastAPI) -> set[tuple[str, str]]:
    document: dict[str, Any] = app.openapi()
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in HTTP_METHODS
    }


def _routes(router: Any, prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute with its full path, through included routers (which newer FastAPI
    keeps as wrappers around the original router instead of copying the routes)."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            yield from _routes(route.original_router, prefix + route.include_context.prefix)


def _sections(text: str) -> dict[tuple[str, str], str]:
    """api.md's endpoint sections: (method, path) -> the text up to the next heading."""
    matches = list(ENDPOINT_HEADING.finditer(text))
    sections: dict[tuple[str, str], str] = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[match.end() : end]
        next_heading = HEADING.search(body)
        sections[(match.group(1), match.group(2))] = (
            body[: next_heading.start()] if (next_heading) else body
        )
    return sections


def test_every_endpoint_of_the_openapi_document_has_a_section_in_api_md(app: FastAPI) -> None:
    documented = set(_sections(_read("api.md")))
    missing = sorted(_operations(app) - documented)
    assert not missing, f"docs/api.md has no '### METHOD /path' heading for {missing}"


def test_api_md_documents_no_endpoint_that_does_not_exist(app: FastAPI) -> None:
    stale = sorted(set(_sections(_read("api.md"))) - _operations(app))
    assert not stale, f"docs/api.md documents endpoints the app does not have: {stale}"


def test_each_endpoint_section_names_the_scope_its_route_requires(app: FastAPI) -> None:
    required: dict[tuple[str, str], str | None] = {}
    for path, route in _routes(app.router):
        scopes = [
            scope
            for dependency in route.dependencies
            if (scope := getattr(dependency.dependency, "required_scope", None)) is not None
        ]
        for method in route.methods or ():
            # The routes' dependencies name one scope each (service.api.deps.require).
            required[(method, path)] = scopes[0] if scopes else None
    operations = _operations(app)
    # Guards the walk itself: a test that found no routes would check nothing.
    assert operations <= set(required), sorted(operations - set(required))
    wrong = {}
    for key, section in _sections(_read("api.md")).items():
        line = SCOPE_LINE.search(section)
        stated = line.group(1) if line else "missing"
        if key in operations and stated != required[key]:
            wrong[key] = (stated, required[key])
    assert not wrong, f"(stated, required) scopes differ: {wrong}"


def test_every_setting_appears_in_configuration_md() -> None:
    text = _read("configuration.md")
    missing = [
        name
        for name in Settings.model_fields
        if f"`{name}`" not in text or f"`MIXOPT_{name.upper()}`" not in text
    ]
    assert not missing, f"docs/configuration.md lacks the settings {missing}"


def test_every_registered_method_is_described_in_concepts_md() -> None:
    text = _read("concepts.md")
    shipped = [m for m in methods() if m.__module__.startswith("mixers.")]  # not tests' plug-ins
    assert shipped
    missing = [f"{m.mode} {m.name}" for m in shipped if f"| `{m.name}` |" not in text]
    assert not missing, f"docs/concepts.md's method tables lack {missing}"


def _commands(group: Any, context: Any, path: tuple[str, ...] = ()) -> Iterator[str]:
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        yield " ".join((*path, name))
        if hasattr(command, "list_commands"):
            sub = command.make_context(name, [], resilient_parsing=True)
            yield from _commands(command, sub, (*path, name))


def test_every_cli_command_appears_in_cli_md() -> None:
    root = typer.main.get_command(cli_app)
    context = root.make_context("mixopt", [], resilient_parsing=True)
    commands = list(_commands(root, context))
    assert "serve" in commands and "db upgrade" in commands  # the walk found the tree
    text = _read("cli.md")
    missing = [c for c in commands if f"`mixopt {c}`" not in text]
    assert not missing, f"docs/cli.md lacks the commands {missing}"


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    to hyphens, a -1, -2 ... suffix on repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for match in HEADING.finditer(re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)):
        slug = re.sub(r"[^\w\- ]", "", match.group(2).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_relative_link_in_docs_resolves() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert {p.name for p in pages} >= {"README.md", "api.md", "concepts.md", "errors.md"}
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif (
                anchor
                and linked.suffix == ".md"
                and anchor not in _anchors(linked.read_text(encoding="utf-8"))
            ):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
