"""What the dashboard ships to the browser: vendored libraries pinned by sha256 with their version
and licence recorded (app/ui/static/vendor/vendor.json), nothing loaded from another host (the
dashboard must draw with the network closed), and a module for every page."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.ui.pages import HERE, PAGES

STATIC = HERE / "static"
VENDOR = STATIC / "vendor"
MANIFEST = VENDOR / "vendor.json"
LICENCE_NAMES = ("LICENSE", "LICENCE", "COPYING")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: In JS and CSS, a string literal (kept: a URL in one is a load) or a comment (dropped: a vendored
#: library's comments cite their sources). Strings end at their line, as in JS.
_JS_TOKENS = re.compile(
    r"""("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(/\*.*?\*/|//[^\n]*)""", re.S
)
#: CSS has block comments only (`url(//host/…)` is a load).
_CSS_TOKENS = re.compile(r"""("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|(/\*.*?\*/)""", re.S)
_HTML_COMMENTS = re.compile(r"<!--.*?-->|\{#.*?#\}", re.S)
#: `scheme://host` or a scheme-relative `//host`, as a browser would fetch it.
_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*:)?//([a-z0-9-]+(?:\.[a-z0-9-]+)+)", re.I)
#: Hosts a page may name without the browser fetching anything: XML namespaces
#: (`createElementNS("http://www.w3.org/2000/svg", …)`) and this machine.
_NOT_FETCHED = {"www.w3.org", "127.0.0.1", "localhost"}
#: `import … from "x"`, `import "x"`, `import("x")` and `export … from "x"` in an ES module.
_IMPORTS = re.compile(
    r"""(?:\bimport\s*\(\s*|\bimport\s+(?:[^"';]*?\s+from\s+)?|\bexport\s+[^"';]*?\s+from\s+)["']([^"']+)["']"""
)


def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MANIFEST.read_text())
    return data


def listed() -> dict[str, str]:
    """Every file the manifest pins, path relative to vendor/ -> sha256."""
    files: dict[str, str] = {}
    for lib in manifest().values():
        files.update(lib["files"])
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_vendored_file_is_pinned_by_its_hash() -> None:
    on_disk = {
        p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file() and p != MANIFEST
    }
    pins = listed()
    assert on_disk, "no vendored library"
    assert not on_disk - pins.keys(), "vendored files missing from vendor.json"
    assert not pins.keys() - on_disk, "vendor.json lists files that are not there"
    for name, digest in pins.items():
        assert SHA256.match(digest), (name, digest)
        assert sha256(VENDOR / name) == digest, f"{name} differs from the version recorded"


@pytest.mark.parametrize("library", sorted(manifest()))
def test_each_library_records_its_version_and_licence_and_ships_it(library: str) -> None:
    entry = manifest()[library]
    assert re.match(r"^\d+\.\d+(\.\d+)?([-.+][\w.]+)?$", entry["version"]), entry
    assert isinstance(entry["license"], str) and entry["license"].strip(), entry
    assert entry["source"].strip(), "say where the files came from, to check them against"
    licences = [f for f in entry["files"] if Path(f).name.upper().startswith(LICENCE_NAMES)]
    assert licences, f"{library} ships no licence file"
    assert all(f.startswith(f"{library}/") for f in entry["files"]), "one folder per library"
    for name in licences:
        assert (VENDOR / name).read_text().strip()


def sources() -> list[Path]:
    """Everything under app/ui a browser loads or a page is made from."""
    return sorted(p for p in HERE.rglob("*") if p.suffix in {".html", ".js", ".mjs", ".css"})


def other_hosts(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".html":
        text = _HTML_COMMENTS.sub("", text)
    else:
        tokens = _CSS_TOKENS if path.suffix == ".css" else _JS_TOKENS
        text = tokens.sub(lambda m: m.group(1) or "", text)
    return [host for host in _URL.findall(text) if host.lower() not in _NOT_FETCHED]


def test_the_url_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner below must be able to fail: loads in code are found, comments are not."""
    js = tmp_path / "a.js"
    js.write_text(
        'import x from "https://cdn.example.com/x.js"; // see https://docs.example.org/\n'
        "/* https://github.com/a/b */ const u = '//fonts.example.net/f.css';\n"
        'const ns = "http://www.w3.org/2000/svg";\n'
    )
    assert other_hosts(js) == ["cdn.example.com", "fonts.example.net"]
    css = tmp_path / "a.css"
    css.write_text("/* http://x.example */ @import url(https://fonts.example.com/a.css);\n")
    assert other_hosts(css) == ["fonts.example.com"]
    html = tmp_path / "a.html"
    html.write_text('<!-- https://a.example --><script src="https://cdn.example.com/j.js">')
    assert other_hosts(html) == ["cdn.example.com"]


def test_nothing_is_loaded_from_another_host() -> None:
    found = {p.relative_to(HERE).as_posix(): other_hosts(p) for p in sources()}
    assert any(p.endswith(".html") for p in found) and any(p.endswith(".js") for p in found)
    assert {p: hosts for p, hosts in found.items() if hosts} == {}


def test_every_page_has_its_module() -> None:
    pages = STATIC / "js" / "pages"
    missing = [module for _, module in PAGES.values() if not (pages / module).is_file()]
    assert missing == [], "PAGES names modules that do not exist"


def test_every_module_import_resolves_to_a_shipped_file() -> None:
    """No build step: an import is a URL the browser fetches, and a 404 breaks the page."""
    modules = sorted(p for p in STATIC.rglob("*.js") if VENDOR not in p.parents)
    assert modules
    for module in modules:
        for spec in _IMPORTS.findall(
            _JS_TOKENS.sub(lambda m: m.group(1) or "", module.read_text())
        ):
            if spec.startswith("/ui/static/"):
                target = STATIC / spec.removeprefix("/ui/static/")
            else:
                assert spec.startswith(("./", "../")), f"{module.name}: bare import {spec!r}"
                target = module.parent / spec
            assert target.resolve().is_file(), f"{module.name} imports {spec!r}: not shipped"
