"""hwsim's layers import one way (issue 13): every ``import`` of an hwsim module -- at module
level or inside a function -- goes to a layer at or below the importer's, and the units form no
cycle. The layers, bottom to top (docs: README "Architecture"):

    errors, io, data, numerics, jitcache, jit_signatures, runtime  <-  datapath  <-  graph,
      qops, mlas  <-  quant, train  <-  execute  <-  report, cost  <-  study, sweep,
      datapath_demo  <-  api  <-  cli, jitrecord
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hwsim"

LAYERS = [
    {"errors", "io", "data", "numerics", "jitcache", "jit_signatures", "runtime"},
    {"datapath"},
    {"graph", "qops", "mlas"},
    {"quant", "train"},
    {"execute"},
    {"report", "cost", "trace"},
    {"study", "datapath_demo", "demo", "sweep"},
    {"api"},
    {"cli", "jitrecord"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str:
    """hwsim.execute.integer -> execute; hwsim.cli -> cli; hwsim -> hwsim."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path, module: str) -> set[str]:
    """The hwsim modules ``path`` imports (absolute, relative, ``from hwsim import x``)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "hwsim"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                if not node.module:  # from . import x
                    out |= {".".join(base + [a.name]) for a in node.names}
                    continue
                name = ".".join(base + [node.module])
            else:
                name = node.module or ""
            if name.split(".")[0] != "hwsim":
                continue
            if name == "hwsim":  # from hwsim import qops, mlas, ... (or a name: __version__)
                out |= {
                    f"hwsim.{a.name}"
                    if (ROOT / a.name).is_dir() or (ROOT / f"{a.name}.py").exists()
                    else "hwsim"
                    for a in node.names
                }
            else:
                out.add(name)
    return out


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_unit_has_a_layer():
    units = {_unit(m) for _, m in _modules()} - {"hwsim"}
    assert units <= set(RANK), f"no layer for {sorted(units - set(RANK))}"


def test_imports_go_down_or_sideways():
    bad = []
    for path, module in _modules():
        src = _unit(module)
        if src == "hwsim":
            continue
        for target in sorted(_imports(path, module)):
            dst = _unit(target)
            if dst in ("hwsim", src):
                continue
            if dst not in RANK or RANK[dst] > RANK[src]:
                bad.append(f"{module} imports {target} ({dst} is above {src})")
    assert not bad, "\n".join(bad)


def test_units_form_no_cycle():
    graph: dict[str, set[str]] = {}
    for path, module in _modules():
        src = _unit(module)
        for target in _imports(path, module):
            dst = _unit(target)
            if src != "hwsim" and dst not in ("hwsim", src):
                graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(u, trail):
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail + [u, v]))
            if not state.get(v):
                visit(v, trail + [u])
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            visit(u, [])


def test_the_check_sees_function_level_imports(tmp_path):
    """The rule counts a late import inside a function (the old calibration's 'no cycle'
    import of the float executor would fail it)."""
    p = tmp_path / "mod.py"
    p.write_text("def f():\n    from hwsim.execute import run_float\n    from . import x\n")
    assert _imports(p, "hwsim.quant.mod") == {"hwsim.execute", "hwsim.quant.x"}
