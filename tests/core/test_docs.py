"""The manual (docs/, a MkDocs site) builds without a broken link, lists every
environment variable the settings read, and shows the Procfile's own process lines."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def variables_read(path: Path) -> set[str]:
    """The environment variables a module reads: env("X"), env.<type>("X"),
    "X" in env, os.environ["X"], os.environ.get("X"), os.getenv("X")."""

    def literal(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    def is_env(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "env") or (
            isinstance(node, ast.Attribute) and node.attr == "environ"
        )

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args and literal(node.args[0]):
            func = node.func
            reads = is_env(func) or (
                isinstance(func, ast.Attribute)
                and func.attr not in ("setdefault", "pop")
                and (is_env(func.value) or func.attr == "getenv")
            )
            if reads:
                names.add(literal(node.args[0]))
        elif isinstance(node, ast.Subscript) and is_env(node.value) and literal(node.slice):
            names.add(literal(node.slice))
        elif isinstance(node, ast.Compare) and literal(node.left) and any(is_env(c) for c in node.comparators):
            names.add(literal(node.left))
    return names


def documented_variables() -> set[str]:
    """The names in the first column of docs/configuration.md's table."""
    names: set[str] = set()
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.S | re.M)


def test_the_manual_builds_with_mkdocs_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "production" / "index.html").exists()
    assert (tmp_path / "site" / "assets" / "console.png").exists()


def test_every_page_in_docs_is_in_the_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: list) -> set[str]:
        found: set[str] = set()
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found |= pages(value) if isinstance(value, list) else {value}
        return found

    assert {path.name for path in DOCS.glob("*.md")} <= pages(config["nav"])


def test_the_variable_reader_finds_each_way_settings_read_the_environment(tmp_path):
    module = tmp_path / "settings.py"
    module.write_text(
        'import os\nA = env.bool("A", default=False)\nB = env("B")\nC = "C" in env\nD = os.environ.get("D")\n'
        'E = os.environ["E"]\nF = os.getenv("F")\nos.environ.setdefault("NOT_READ", "x")\nG = env.db("G")\n'
    )
    assert variables_read(module) == {"A", "B", "C", "D", "E", "F", "G"}


def test_every_environment_variable_the_settings_read_is_in_the_configuration_reference():
    read = variables_read(ROOT / "config" / "settings.py")
    assert {"DATABASE_URL", "SECRET_KEY", "REDIS_URL", "DB_POOL_MAX_SIZE"} <= read  # the reader works
    missing = read - documented_variables()
    assert not missing, f"docs/configuration.md's table lacks {sorted(missing)}"


def test_the_production_guide_shows_exactly_the_procfiles_process_lines():
    procfile = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    guide = (DOCS / "production.md").read_text()
    shown = [block.splitlines() for block in code_blocks(guide) if block.startswith(("web:", "worker:"))]
    assert len(shown) == 1, "the guide shows the processes in one block"
    assert shown[0] == procfile
    # Anywhere else the guide names a process line, it is the Procfile's.
    for line in guide.splitlines():
        name = line.split(":", 1)[0]
        if re.fullmatch(r"(web|worker|beat|release)", name) and ": " in line:
            assert line in procfile, line
