"""The documents cannot rot silently.

- docs/reference.md has a row for every setting (variable, TOML key, default), account key,
  credential variable and log event the worker logs, and no row for one that does not exist.
- docs/operations.md lists every metric; docs/reference.md every field of ``worker.stats``.
- docs/contributing.md's module map names every module of the package, and nothing else.
- Every relative link in README.md and docs/ points to a file (and heading) that exists, and
  every module path or dotted name they mention exists.

Each check first asserts that its scan finds something it must find, so a scan that breaks
fails instead of passing on nothing.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.config import accounts, credentials
from worker.config.settings import ENV_NAMES, SETTINGS_DOC

DOCS = REPO / "docs"
PACKAGE = REPO / "worker"
GENERATED = {DOCS / "reliability.md"}  # written by `make chaos`; not checked for content
DOCUMENTS = [REPO / "README.md", *sorted(p for p in DOCS.glob("*.md") if p not in GENERATED)]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


REFERENCE = _read(DOCS / "reference.md")
OPERATIONS = _read(DOCS / "operations.md")
CONTRIBUTING = _read(DOCS / "contributing.md")

_FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$", re.MULTILINE)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks, whose ``#`` lines are no headings."""
    return _FENCE.sub("", text)


def section(text: str, title: str) -> str:
    """The body under the heading ``title`` down to the next heading of its level or above."""
    for match in _HEADING.finditer(_prose(text)):
        if match.group(2) == title:
            level = len(match.group(1))
            rest = _prose(text)[match.end() :]
            end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
            return rest[: end.start()] if end else rest
    raise AssertionError(f"no heading {title!r}")


def first_cells(text: str) -> list[str]:
    """The first cell of every table row in ``text``, backticks kept."""
    return [m.group(1).strip() for m in re.finditer(r"^\|([^|]+)\|", text, re.MULTILINE)]


def code_names(text: str) -> set[str]:
    """Every name written in backticks in ``text``."""
    return {span.strip("`") for span in _CODE_SPAN.findall(_prose(text))}


# --- Settings, accounts, credentials -----------------------------------------------------

SETTINGS_SECTION = section(REFERENCE, "Settings")


def _setting_rows() -> dict[str, list[str]]:
    rows = {}
    for line in SETTINGS_SECTION.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`ACKWORKER_"):
            rows[cells[0].strip("`")] = cells
    return rows


SETTING_ROWS = _setting_rows()


def test_the_settings_scan_works() -> None:
    assert "ACKWORKER_REDIS_URL" in SETTING_ROWS
    assert len(SETTINGS_DOC) > 30


@pytest.mark.parametrize(("name", "env", "default", "doc"), SETTINGS_DOC)
def test_every_setting_is_documented(name: str, env: str, default: str, doc: str) -> None:
    row = SETTING_ROWS.get(env)
    assert row is not None, f"docs/reference.md's settings table has no row for {env}"
    assert row[1] == f"`{name}`", f"the row of {env} does not name the TOML key {name}"
    assert row[2].strip("`") == default, f"the row of {env} gives the default {row[2]}"


def test_no_row_documents_a_setting_that_does_not_exist() -> None:
    extra = sorted(set(SETTING_ROWS) - set(ENV_NAMES.values()))
    assert extra == [], f"docs/reference.md documents unknown settings: {extra}"


def test_every_account_key_is_documented() -> None:
    rows = {cell.strip("`") for cell in first_cells(section(REFERENCE, "Accounts"))}
    keys = set(accounts._KEYS)
    assert "credentials_file" in keys
    assert keys <= rows, f"account keys missing from docs/reference.md: {sorted(keys - rows)}"
    assert rows - keys <= {"key", "---"}, f"unknown account keys: {sorted(rows - keys)}"


@pytest.mark.parametrize(
    "variable",
    [
        credentials.ENV_ACCESS_KEY_ID,
        credentials.ENV_ACCESS_KEY_SECRET,
        credentials.ENV_SECURITY_TOKEN,
        credentials.ENV_CREDENTIALS_FILE,
        credentials.ENV_PROFILE,
    ],
)
def test_every_credential_variable_is_documented(variable: str) -> None:
    assert variable in code_names(section(REFERENCE, "Credentials"))


# --- Log events --------------------------------------------------------------------------

_LOG_CALL = re.compile(
    # A literal first argument: log.info("batch.settled", ...).
    r"\blog\.(?:debug|info|warning|error|critical|exception)\(\s*\"([a-z_.]+)\""
    # Handed to a helper that logs it (ApiRetry, serve_until_signalled).
    r"|\bevent=\"([a-z_.]+)\""
    # The event a class stands for, logged through it (the fatal errors of worker/errors.py).
    r"|^\s+event = \"([a-z_.]+)\"",
    re.MULTILINE,
)


def logged_events() -> set[str]:
    """Every event name the worker logs (the stand-in's and the demo's logs are not its)."""
    sources = [p for p in PACKAGE.rglob("*.py") if not p.is_relative_to(PACKAGE / "dev")]
    found = (m for path in sources for m in _LOG_CALL.findall(path.read_text()))
    return {"".join(groups) for groups in found}


LOG_SECTION = section(REFERENCE, "Log events")
DOCUMENTED_EVENTS = {
    cell.strip("`")
    for cell in first_cells(LOG_SECTION)
    if re.fullmatch(r"`[a-z_]+\.[a-z_.]+`", cell)
}


def test_the_event_scan_works() -> None:
    events = logged_events()
    assert "batch.settled" in events  # log.info("batch.settled", ...)
    assert "api.retry_scheduled" in events  # event="api.retry_scheduled"
    assert "api.tls_failed" in events  # event = "api.tls_failed" on a class
    assert "worker.stopped" in DOCUMENTED_EVENTS


def test_every_log_event_is_documented() -> None:
    missing = sorted(logged_events() - DOCUMENTED_EVENTS)
    assert missing == [], f"log events missing from docs/reference.md: {missing}"


def test_every_documented_event_is_logged() -> None:
    stale = sorted(DOCUMENTED_EVENTS - logged_events())
    assert stale == [], f"docs/reference.md documents events nothing logs: {stale}"


def test_every_field_of_worker_stats_is_documented() -> None:
    source = _read(PACKAGE / "observe" / "reporter.py")
    fields = set(re.findall(r"^\s+\"([a-z_]+)\": ", source, re.MULTILINE)) | {"redis_error"}
    assert {"settled_per_s", "backlog_change", "dead_reasons"} <= fields
    documented = code_names(section(REFERENCE, "The `worker.stats` event"))
    missing = sorted(fields - documented)
    assert missing == [], f"worker.stats fields missing from docs/reference.md: {missing}"


# --- Metrics -----------------------------------------------------------------------------


def test_every_metric_is_documented_and_exists() -> None:
    source = _read(PACKAGE / "observe" / "metrics.py")
    families = set(re.findall(r"\"(ackworker_[a-z_]+)\"", source))
    assert "ackworker_items" in families
    rows = {
        cell.strip("`").removesuffix("_total")
        for cell in first_cells(section(OPERATIONS, "Metrics"))
        if cell.startswith("`ackworker_")
    }
    assert sorted(families - rows) == [], "metrics missing from docs/operations.md"
    assert sorted(rows - families) == [], "docs/operations.md lists metrics that do not exist"


# --- The module map ----------------------------------------------------------------------

_PATH = re.compile(r"`(worker/[\w/]*?(?:\.py|/))`")
MOCKAPI = PACKAGE / "dev" / "mockapi"


def modules_to_map() -> set[str]:
    """Every module of the package but ``__init__.py``; the stand-in counts as one."""
    found = {
        path.relative_to(REPO).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and not path.is_relative_to(MOCKAPI)
    }
    return found | {"worker/dev/mockapi/"}


def test_the_module_map_names_every_module() -> None:
    named = set(_PATH.findall(section(CONTRIBUTING, "Module map")))
    wanted = modules_to_map()
    assert {"worker/store/keys.py", "worker/__main__.py"} <= wanted
    if all(m.relative_to(REPO).as_posix() in named for m in MOCKAPI.glob("[!_]*.py")):
        named.add("worker/dev/mockapi/")  # the stand-in's modules listed one by one
    missing = sorted(wanted - named)
    assert missing == [], f"docs/contributing.md's module map lacks {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_module_path_named_exists(document: Path) -> None:
    gone = sorted(p for p in _PATH.findall(_read(document)) if not (REPO / p).exists())
    assert gone == [], f"{document.name} names paths that do not exist: {gone}"


def _resolves(dotted: str) -> bool:
    """Whether ``worker.a.b.Name`` is a module of the package or a name in one, or else a log
    event the worker logs (``worker.stats``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        base = REPO.joinpath(*parts[:cut])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            obj: object = importlib.import_module(".".join(parts[:cut]))
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return False
                obj = getattr(obj, attr)
            return True
    return dotted in logged_events()  # not below a module: only a log event may look so


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_dotted_name_in_the_package_exists(document: Path) -> None:
    text = _read(document)
    names = set(re.findall(r"(?<![/\w.])worker(?:\.\w+)+", text))  # not a path: .demo/worker.log
    gone = sorted(n for n in names if not _resolves(n))
    assert gone == [], f"{document.name} names modules or objects that do not exist: {gone}"


def test_the_name_check_catches_a_missing_name() -> None:
    assert _resolves("worker.store.enqueue.InvalidIdError")
    assert not _resolves("worker.store.enqueue.NoSuchThing")
    assert not _resolves("worker.store.nosuchmodule")
    assert _resolves("worker.stats")  # a log event
    assert not _resolves("worker.gate")  # a module that moved
    assert not _resolves("worker.keeper.Keeper")


# --- Links -------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text (repeats get ``-1``, ``-2``, as on GitHub)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for match in _HEADING.finditer(_prose(text)):
        base = slug(match.group(2))
        repeat = counts.get(base, 0)
        counts[base] = repeat + 1
        found.add(base if repeat == 0 else f"{base}-{repeat}")
    return found


def broken_links(document: Path, text: str) -> list[str]:
    """The relative links of ``text`` (in ``document``) whose file or heading is missing."""
    broken = []
    for target in _LINK.findall(_CODE_SPAN.sub("", _prose(text))):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        if path:
            file = (document.parent / path).resolve()
            if not file.exists():
                broken.append(target)
                continue
            if not anchor or file.suffix != ".md":
                continue
            headings = anchors(_read(file))
        else:
            headings = anchors(text)
        if anchor not in headings:
            broken.append(target)
    return broken


# deploy/README.md and bench/README.md link into README.md and docs/ too.
LINKING = [*DOCUMENTS, *GENERATED, REPO / "deploy" / "README.md", REPO / "bench" / "README.md"]


@pytest.mark.parametrize("document", LINKING, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(document: Path) -> None:
    broken = broken_links(document, _read(document))
    assert broken == [], f"{document.relative_to(REPO)} has broken links: {broken}"


def test_the_link_check_catches_broken_links() -> None:
    text = "# Top\n\n## The `worker.stats` event\n\n[a](#the-workerstats-event) [b](#nope) "
    text += "[c](design.md#shutdown) [d](design.md#nope) [e](missing.md) [f](https://x.y/z)\n"
    text += "```sh\n# not a heading\n```\n[g](#not-a-heading)\n"
    broken = broken_links(DOCS / "example.md", text)
    assert broken == ["#nope", "design.md#nope", "missing.md", "#not-a-heading"]
