"""The package's layering, read from the source (docs/development.md, "Layering").

Every .py under tagloom/, training/ (the package ``tagloom.training``) and nodes/ is parsed with
``ast``, never imported, and each import becomes an edge of the module graph: top-level imports and
the ones inside functions alike (a lazy import still ties the two modules together), relative ones
resolved, plus ``importlib.import_module("x")`` / ``__import__("x")`` / ``sys.modules[...]`` lookups
of constant names. The tests then check:

- no import cycle among the modules of ``tagloom`` (the cycle found is printed, with file:line);
- the core never imports a host (ComfyUI, the WebUI) or the pack's adapters (``nodes``, ``scripts``),
  except in the modules listed in HOST_ADAPTERS, each with its reason;
- the core's parts only point down the layers of LAYERS;
- nothing imports a top-level ``training``: the trainers are ``tagloom.training``, in a checkout and
  installed, and pyproject.toml lists every package.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The core's parts, bottom first. A part may import its own modules and the parts of lower layers,
# never one of the same layer or above (the foundation's modules may import each other). A new
# subpackage or top-level module of tagloom/ goes into one of these, and into docs/development.md.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"tagloom", "errors", "tomlcompat", "config", "jsonfile", "options", "images", "progress",
                    "caches", "workflow_paths", "names"}),
    ("models and tag data", {"tagger", "tags"}),
    ("features on one of them", {"caption", "search", "training"}),
    ("features on several", {"llm", "server"}),
    ("front ends", {"cli"}),
    ("python -m tagloom", {"__main__"}),
]

# Top-level names the core must not import: the hosts' modules (ComfyUI: comfy*, folder_paths,
# server, execution, nodes; the WebUI: modules, launch, gradio) and our own host-side code (nodes/,
# scripts/, comfy_routes.py, install.py). Our trainers are tagloom.training, never `training`.
HOSTS = {"comfy", "comfy_extras", "comfy_execution", "comfy_api", "folder_paths", "server", "execution",
         "nodes", "modules", "launch", "gradio", "webui", "scripts", "comfy_routes", "install", "training"}

# (core module, host module) -> why the core may touch it. Keep this short; a new host need goes
# into the adapters (nodes/, comfy_routes.py, scripts/) instead.
HOST_ADAPTERS = {
    ("tagloom.config", "folder_paths"): "inside ComfyUI, models live under ComfyUI's models/ folder: config looks "
                                         "ComfyUI's folder_paths up in sys.modules (never imports it, so outside "
                                         "ComfyUI nothing changes) and registers the tagloom model folder with it",
}


# --- the graph ------------------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "training":
        parts = ["tagloom", *parts]  # installed (and imported) as tagloom.training
    elif parts[:2] == ["tagloom", "training"]:
        return "tagloom.training"  # the checkout's stand-in for training/__init__.py
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for top in ("tagloom", "training", "nodes"):
        for path in sorted((REPO / top).rglob("*.py")):
            out.setdefault(_module_name(path), []).append(path)
    return out


def _constant_arg(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def _is_sys_modules(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def _imports(module: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, resolved to the longest known module
    (a name imported from a package is the submodule when there is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub if sub in modules else source, node.lineno))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__") or (name == "get" and _is_sys_modules(getattr(fn, "value", None))):
                target = _constant_arg(node)
                if target:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.Subscript) and _is_sys_modules(node.value):
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                found.append((node.slice.value, node.lineno))
    return found


def _resolve(name: str, modules: set[str]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def build_graph():
    """{module: {imported module (ours, or the raw name when not ours): [(file, line), ...]}}."""
    sources = _sources()
    modules = set(sources)
    graph: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for module, paths in sources.items():
        edges = graph.setdefault(module, {})
        for path in paths:
            for name, line in _imports(module, path, modules):
                target = _resolve(name, modules) or name
                if target != module:
                    edges.setdefault(target, []).append((str(path.relative_to(REPO)), line))
    return graph


GRAPH = build_graph()


def _where(a: str, b: str) -> str:
    file, line = GRAPH[a][b][0]
    return f"{a} -> {b} ({file}:{line})"


# --- cycles ---------------------------------------------------------------------------------------

def _cycles(nodes: set[str]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component of more than one module."""
    succ = {n: sorted(t for t in GRAPH.get(n, {}) if t in nodes) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        components.append(sorted(comp))
    cycles = []
    for comp in components:
        members = set(comp)
        start = comp[0]
        # the shortest path back to start inside the component
        prev: dict[str, str] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for w in succ[v]:
                if w not in members or w in prev:
                    continue
                prev[w] = v
                if w == start:
                    queue.clear()
                    break
                queue.append(w)
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        cycles.append(path[::-1])
    return cycles


def test_the_graph_sees_the_package():
    # guards the parsing itself: known edges of each kind are there
    assert "tagloom.caption.plan" in GRAPH["tagloom.caption.ray_engine"]  # top-level import
    assert "tagloom.caption.ray_engine" in GRAPH["tagloom.caption.job"]  # inside a function
    assert "tagloom.training.progress" in GRAPH["tagloom.training.launcher"]  # training/ is tagloom.training
    assert "folder_paths" in GRAPH["tagloom.config"]  # a sys.modules lookup
    assert any(t.startswith("tagloom.") for t in GRAPH["nodes.tagger"])


def test_no_import_cycles_in_tagloom():
    ours = {m for m in GRAPH if m == "tagloom" or m.startswith("tagloom.")}
    cycles = _cycles(ours)
    lines = ["  " + " -> ".join(c) + "\n" + "\n".join(f"      {_where(a, b)}" for a, b in zip(c, c[1:]))
             for c in cycles]
    assert not cycles, "import cycles in tagloom (move what both need into a module both import):\n" + "\n".join(lines)


# --- hosts ----------------------------------------------------------------------------------------

def test_the_core_never_imports_a_host():
    bad, used = [], set()
    for module, edges in GRAPH.items():
        if not (module == "tagloom" or module.startswith("tagloom.")):
            continue
        for target in edges:
            top = target.split(".")[0]
            if top not in HOSTS:
                continue
            if (module, top) in HOST_ADAPTERS:
                used.add((module, top))
                continue
            bad.append(_where(module, target))
    assert not bad, ("the core imports a host or the pack's adapters (docs/development.md, Layering); put that in "
                     "nodes/, comfy_routes.py or scripts/, or declare it in HOST_ADAPTERS with its reason:\n  "
                     + "\n  ".join(bad))
    assert used == set(HOST_ADAPTERS), f"HOST_ADAPTERS lists exceptions no longer needed: {set(HOST_ADAPTERS) - used}"


def test_nothing_imports_a_top_level_training_package():
    bad = [_where(module, target) for module, edges in GRAPH.items() for target in edges
           if target == "training" or target.startswith("training.")]
    assert not bad, "import the trainers as tagloom.training:\n  " + "\n  ".join(bad)


# --- layers ---------------------------------------------------------------------------------------

def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tagloom"


def test_core_parts_only_point_down():
    rank = {}
    for i, (_, parts) in enumerate(LAYERS):
        for part in parts:
            assert part not in rank, f"{part} is in two layers"
            rank[part] = i
    ours = sorted(m for m in GRAPH if m == "tagloom" or m.startswith("tagloom."))
    unknown = sorted({_part(m) for m in ours} - set(rank))
    assert not unknown, (f"tagloom parts in no layer: {unknown}; add them to LAYERS in tests/test_layering.py and to "
                         "docs/development.md (Layering)")
    bad = []
    for module in ours:
        a = _part(module)
        for target in GRAPH[module]:
            if not (target == "tagloom" or target.startswith("tagloom.")):
                continue
            b = _part(target)
            if a == b or rank[b] < rank[a] or (rank[a] == rank[b] == 0):
                continue
            how = "same layer" if rank[a] == rank[b] else "upward"
            bad.append(f"{how}: {_where(module, target)} [{LAYERS[rank[a]][0]} -> {LAYERS[rank[b]][0]}]")
    assert not bad, "imports against the layering (docs/development.md, Layering):\n  " + "\n  ".join(bad)


# --- tagloom.training, in a checkout and installed ----------------------------------------------

def test_pyproject_installs_every_package_under_tagloom():
    from tagloom.tomlcompat import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert setup["package-dir"] == {"tagloom.training": "training"}
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "tagloom").rglob("__init__.py")}
    packages |= {".".join(("tagloom", *p.parent.relative_to(REPO).parts)) for p in (REPO / "training").rglob("__init__.py")}
    assert sorted(setup["packages"]) == sorted(packages)
    assert not any(p == "training" or p.startswith("training.") for p in setup["packages"])
    assert setup["package-data"] == {"tagloom.training": ["lora/configs/**/*"]}


def test_tagloom_training_imports_without_a_top_level_training(tmp_path):
    """From another folder, with the repository on sys.path the way ComfyUI puts it there: the trainers
    load from training/ as tagloom.training, and no module named `training` is imported."""
    code = ("import sys, tagloom.training.lora.train, tagloom.training.tagger.train, tagloom.training.launcher as l\n"
            "import tagloom.training as t\n"
            "assert t.__path__ == [sys.argv[1] + '/training'], t.__path__\n"
            "assert tagloom.training.lora.train.__file__ == sys.argv[1] + '/training/lora/train.py'\n"
            "assert not [m for m in sys.modules if m == 'training' or m.startswith('training.')]\n"
            "assert l.ROOT == l.REPO and str(l.ROOT) == sys.argv[1]\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_the_train_launcher_needs_no_pythonpath(monkeypatch):
    """The Train node's child: `python -m tagloom train ...` started in the folder holding tagloom
    (`-m` puts it first on sys.path), with no PYTHONPATH added; it runs for real (`--help`)."""
    import subprocess as sp

    import tagloom
    from tagloom.training import launcher

    assert launcher.ROOT == Path(tagloom.__file__).resolve().parents[1]
    seen = {}
    real_popen = sp.Popen

    def popen(argv, **kw):
        seen.update(argv=argv, **kw)
        return real_popen(argv, **kw)

    monkeypatch.setattr(launcher.subprocess, "Popen", popen)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    run = launcher.TrainingRun(["--help"], env=env)
    assert run.follow() == 0
    assert seen["argv"] == [sys.executable, "-m", "tagloom", "train", "--help"]
    assert seen["cwd"] == str(launcher.ROOT) and "PYTHONPATH" not in seen["env"]
    assert any("usage: tagloom train" in line for line in run.lines), list(run.lines)


def test_name_sets_are_declared_once():
    """tagloom/names.py declares the choice sets every front end offers; no module spells one out
    again (CLI choices, node combos, trainer options and core checks read it)."""
    import re

    from tagloom import names

    sets = {k: v for k, v in vars(names).items() if k.isupper() and isinstance(v, tuple) and len(v) > 1}
    found = []
    for root in ("tagloom", "nodes", "training", "scripts"):
        for path in (REPO / root).rglob("*.py"):
            if path.name == "names.py":
                continue
            text = path.read_text(encoding="utf-8")
            for name, values in sets.items():
                literal = r"[\[(]\s*" + r"\s*,\s*".join(re.escape(f'"{v}"') for v in values) + r"\s*,?\s*[\])]"
                if re.search(literal, text):
                    found.append(f"{path.relative_to(REPO)}: a copy of names.{name}")
    assert not found, found
