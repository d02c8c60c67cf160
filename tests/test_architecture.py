"""The layout stays true without anyone policing it: import contracts (import-linter), no private names
imported across modules, no import cycles between modules, nothing cited from outside the repository, and
``import spikegpt`` pulls in no training, plotting or tool code."""

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spikegpt"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every ``from ... import`` in the file, absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def test_import_contracts_hold():
    """The contracts in pyproject.toml ([tool.importlinter]): tools -> train -> interop | snn -> model -> kernels."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache", "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 5, proc.stdout


def test_no_private_names_are_imported_across_modules():
    mods = modules()
    bad = []
    for name, path in mods.items():
        for target, names, line in imports_of(name, path):
            if target.split(".")[0] != "spikegpt" or target == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {n} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    mods = modules()
    graph = {name: set() for name in mods}
    for name, path in mods.items():
        for target, names, _ in imports_of(name, path):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in mods and cand != name and not name.startswith(cand + "."):
                    graph[name].add(cand)
                    break
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [nxt]):
                return True
        state[node] = 2
        return False

    for node in graph:
        if state.get(node) is None and visit(node, [node]):
            break
    assert not cycle, " -> ".join(cycle)


def test_nothing_cites_files_outside_the_repository():
    """Code and docs never point at ``../shared`` or ``spec/*.md``: those files are not part of the repository."""
    cite = re.compile(r"\.\./shared|\bspec/[a-z_]+\.md")
    files = [*PACKAGE.rglob("*.py"), *REPO.glob("docs/*.md"), *REPO.glob("benchmarks/*"), REPO / "README.md"]
    bad = [str(p.relative_to(REPO)) for p in files if p.is_file() and cite.search(p.read_text(encoding="utf-8"))]
    assert not bad, bad


def test_import_spikegpt_loads_no_training_tool_or_plotting_code():
    code = ("import sys, spikegpt, spikegpt.kernels; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('datasets', 'matplotlib', 'lm_eval') "
            "or m.startswith(('spikegpt.train', 'spikegpt.tools', 'spikegpt.interop'))]; print(bad)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
