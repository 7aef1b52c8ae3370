"""The project's modules import each other without cycles, including cycles hidden
by imports inside functions, and every import inside a function says why it is
there. Read from the source with `ast`: no module is imported to check this."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("accounts", "billing", "chat", "core", "reporting", "routing", "config", "bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_files() -> dict[str, Path]:
    files = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" not in path.parts:
                files[_module_name(path)] = path
    return files


MODULES = _project_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, bool]]:
    """(import node, inside a function) for every import that runs, skipping
    `if TYPE_CHECKING:` blocks."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return found


def _targets(module: str, node: ast.stmt) -> set[str]:
    """The project modules an import statement loads (the most specific one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if MODULES[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    targets = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = set().union(*(_targets(module, node) for node, _ in _imports(tree)))
    # A module's own package __init__ is loaded before it anyway: no edge back to it.
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_project_modules() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (each line one cycle):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_services_never_import_tasks() -> None:
    graph = _graph()
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.split(".")[-1] == "services" or ".services." in module
        for target in targets
        if target.split(".")[-1] == "tasks"
    ]
    assert not wrong, "tasks import services, never the reverse:\n" + "\n".join(wrong)


def _comment(line: str) -> str:
    """A line's comment without `noqa` codes."""
    if "#" not in line:
        return ""
    comment = line.split("#", 1)[1].strip()
    if comment.startswith("noqa"):
        comment = comment.partition(" ")[2].strip()
    return comment


def _reason(lines: list[str], lineno: int) -> str:
    """The comment on an import's line, or above the run of imports it belongs to."""
    index = lineno - 1
    if _comment(lines[index]):
        return _comment(lines[index])
    while index > 0:
        index -= 1
        above = lines[index].strip()
        if above.startswith("#") and _comment(above):
            return _comment(above)
        if not above.startswith(("import ", "from ")) or _comment(above):
            return _comment(above)
    return ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_inside_functions_say_why(module: str) -> None:
    path = MODULES[module]
    source = path.read_text()
    lines = source.splitlines()
    silent = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
        for node, in_function in _imports(ast.parse(source))
        if in_function and not _reason(lines, node.lineno)
    ]
    assert not silent, "an import inside a function needs a comment naming the reason:\n" + "\n".join(silent)
