"""The package's layers and import graph, read from the source (every import, lazy ones inside
functions included, so a cycle cannot hide behind a deferred import).

Layers, lowest first: formats, kernels, transforms, the C++ extension < ops < losses < models,
data (siblings: neither imports the other) < inference, evaluate < train < drivers (`cli.py`,
`__main__.py`, `*/cli.py`, `demo.py`, `recipe/`, `app/`). A module imports its own package or
lower layers only; drivers may also use each other (the evaluate command shares the predictor options
of the inference commands). Inside `ops` a fused op's route goes one way (`OPS_RANKS`); the
Triton kernels import nothing of the package; every subcommand lives in a `cli.py`.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "depth_anything_fast"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: dict[str, int] = {
    "formats": 0,
    "kernels": 0,
    "configs": 0,  # YAML files; the package only says where they are
    "_checkout": -1,  # where kernels/ and configs/ live in a checkout (stdlib only)
    "_lazy": -1,  # the packages' lazy re-exports (stdlib only)
    "_C": 0,
    "runtime": 0,  # torchrun environment and SIGTERM handling (issue 14; stdlib only)
    "transforms": 0,  # the official preprocessing rules: resize sizes, bicubic, normalisation
    "ops": 1,
    "losses": 2,
    # siblings since issue 23: the loaders take the preprocessing rules from `transforms`
    "models": 3,
    "data": 3,
    "inference": 5,
    "evaluate": 5,
    "train": 6,
}
DRIVER_LAYER = 7
DRIVERS = ("cli", "__main__", "demo")
LAYERS["recipe"] = DRIVER_LAYER  # the recipe's pipeline and ablation drivers (issue 11)
LAYERS["app"] = DRIVER_LAYER  # the web page (issue 21)
# Imports waiting for another change (none now: the losses' float64 references live beside the
# ops since issue 12).
PENDING: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Package modules named by every import statement of `path` (any depth in the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the module pkg.sub when there is one
            subs = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
            targets = subs if target == PACKAGE else [target, *subs]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        # a package the importer lies in is already being imported: `from . import sub`
        found.update(
            t for t in targets
            if t.split(".")[0] == PACKAGE and t != name and not name.startswith(t + ".")
        )
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    base = ROOT / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or (
        module == f"{PACKAGE}._C"
    )


@functools.cache
def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[-1] in DRIVERS:
        return DRIVER_LAYER  # the package's own __init__ imports nothing
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: new top-level module or package; add it to LAYERS")
    return LAYERS[parts[1]]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _parents(module: str) -> list[str]:
    """The packages whose `__init__` importing `module` runs: a.b.c -> [a.b] (not the root)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _import_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """What importing each module runs: its imports and their parent packages' `__init__`s.

    Left out: a module's implicit import of the packages it lies in (Python runs those first by
    design, not by a cycle).
    """
    out: dict[str, set[str]] = {}
    for a, bs in graph.items():
        edges = set()
        for b in bs:
            if (a, b) in PENDING:
                continue
            edges.update(p for p in _parents(b) if not a.startswith(p + "."))
            edges.add(b)
        out[a] = edges - {a}
    return out


def test_import_graph_has_no_cycle():
    cycles = _cycles(_import_graph(_graph()))
    assert not cycles, f"import cycles (lazy imports count): {cycles}"


def test_imports_go_down_the_layers():
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, bs in _graph().items()
        for b in bs
        if (a, b) not in PENDING
        and a.split(".")[:2] != b.split(".")[:2]
        and (_layer(b) > _layer(a) or _layer(b) == _layer(a) < DRIVER_LAYER)
    ]
    assert not upward, "imports that go up or sideways:\n" + "\n".join(sorted(upward))


# One fused op reads top to bottom (ops/__init__.py): losses -> dispatch -> autograd -> a backend
# -> kernels. Inside `ops`, a module imports only modules of a lower rank here.
OPS_RANKS = {"interface": 0, "pytorch": 0, "cpu": 1, "triton": 1, "autograd": 2, "dispatch": 3}
# What `losses` may take from `ops`: the dispatch and the argument tuples (through the package),
# and the plain PyTorch references (re-exported by `losses.reference`).
LOSSES_USE = {f"{PACKAGE}.ops", f"{PACKAGE}.ops.pytorch"}


def test_fused_op_route_goes_one_way():
    ops = {m: bs for m, bs in _graph().items() if m.startswith(f"{PACKAGE}.ops.")}
    assert set(OPS_RANKS) == {m.rsplit(".", 1)[1] for m in ops}, "new ops module: rank it"
    wrong = [
        f"{a} imports {b}"
        for a, bs in ops.items()
        for b in bs
        if b.startswith(f"{PACKAGE}.ops.")
        and OPS_RANKS[b.rsplit(".", 1)[1]] >= OPS_RANKS[a.rsplit(".", 1)[1]]
    ]
    assert not wrong, "ops modules that import sideways or back up the route:\n" + "\n".join(wrong)
    losses = {b for m, bs in _graph().items() if m.startswith(f"{PACKAGE}.losses") for b in bs}
    reached = {b for b in losses if b.startswith(f"{PACKAGE}.ops")}
    assert reached <= LOSSES_USE, f"losses reach past the dispatch: {sorted(reached - LOSSES_USE)}"


def test_kernels_import_only_kernels():
    """kernels/ (the top-level folder of `depth_anything_fast.kernels`) holds Triton code only:
    besides torch, triton and the stdlib it imports its own modules, nothing of the package."""
    files = sorted((ROOT.parent / "kernels").glob("*.py"))
    assert any(f.name == "affine_invariant.py" for f in files)
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            wrong += [f"{path.name} imports {n}" for n in names if n.split(".")[0] == PACKAGE]
    assert not wrong, "\n".join(wrong)


def test_checks_see_cycles_and_upward_imports():
    """The checks above fail on a planted cycle and a planted upward import."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(planted) == [["a", "b", "c"]]
    # a cycle through a package __init__: x.m -> y.n runs y/__init__, which imports x
    hidden = _import_graph({"p.x.m": {"p.y.n"}, "p.y": {"p.x.m"}, "p.y.n": set()})
    assert _cycles(hidden) == [["p.x.m", "p.y"]]
    assert _layer(f"{PACKAGE}.formats.spec") < _layer(f"{PACKAGE}.data.sources")
    assert _layer(f"{PACKAGE}.data.sources") < _layer(f"{PACKAGE}.inference.cli")
    assert f"{PACKAGE}.formats.manifest" in _graph()[f"{PACKAGE}.data.sources"]


@pytest.mark.parametrize("module", sorted(_module_name(p) for p in (ROOT / "formats").glob("*.py")))
def test_formats_import_without_torch(module):
    """The storage layer stays light: a fresh interpreter imports it without torch."""
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    "code",
    [
        "import depth_anything_fast.cli as c; c.build_parser()",  # what --help runs
        "import depth_anything_fast.train.config",  # python -m depth_anything_fast.train --help
    ],
)
def test_command_line_help_imports_without_torch(code):
    check = f"import sys; {code}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


def test_every_subcommand_lives_in_a_cli_module():
    """`depth-anything-fast`'s subcommands are registered by the `cli.py` of their package, and
    only there: every `<package>/cli.py` is registered, and no other module defines `register`."""
    from depth_anything_fast import cli

    registered = set(cli._COMMAND_MODULES)
    assert registered == {_module_name(p) for p in ROOT.glob("*/cli.py")}
    elsewhere = [
        _module_name(path)
        for path in ROOT.rglob("*.py")
        if path.name != "cli.py"
        and any(isinstance(node, ast.FunctionDef) and node.name == "register"
                for node in ast.parse(path.read_text()).body)
    ]  # fmt: skip
    assert not elsewhere, f"subcommands registered outside a cli.py: {elsewhere}"
