"""The package's architecture, read from its source: modules, line counts, the import graph.

    python scripts/architecture.py --write docs/architecture.md   # the page's generated part
    python scripts/architecture.py --check                       # exit 1 naming what breaks a rule below

Every `import` and `from ... import` of siqa modules is read with `ast`, function-level ones
included (they are dependencies too). The rules:
- no import cycle between modules;
- the scoring side (siqa.inference, the matrix, merged runs, evaluate.py's module, siqa.scoring)
  imports nothing of siqa.training;
- no function longer than MAX_FUNCTION lines;
- at most MAX_ROOT modules at the package root;
- a setting is read through siqa.settings.Settings (`Settings(cfg).train.epochs`), never as
  `cfg["train"]["epochs"]`, so that renaming a key is its declaration alone (writes into the
  config dict stay subscripts).
"""
import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "siqa"
MAX_FUNCTION = 80
MAX_ROOT = 12
SCORING = ("siqa.inference", "siqa.scoring", "siqa.evaluation.matrix", "siqa.evaluation.merge",
           "siqa.evaluation.evaluate", "siqa.build")
# the stages in the order data flows, for the diagram
STAGES = ("root", "data", "nss", "models", "scoring", "training", "evaluation", "inference")


def modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name, path, known) -> set:
    """The siqa modules `name` imports (a `from siqa.x import y` names siqa.x.y where that is
    a module, else siqa.x)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("siqa"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("siqa"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known and m != name}


def graph() -> dict:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges) -> list:
    """Each cycle found by a depth-first search, as the list of its modules."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return found


def long_functions() -> list:
    """(module path, function, lines) of every function longer than MAX_FUNCTION lines."""
    out = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION:
                    out.append((str(path.relative_to(ROOT)), node.name, length))
    return out


def declared_keys() -> set:
    """The dotted keys declared in siqa/settings.py (the first argument of each Setting(...))."""
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Setting"
            and node.args and isinstance(node.args[0], ast.Constant)}


def subscript_reads() -> list:
    """(module path, line, key) of every read of a declared two-level key as a subscript chain,
    x["section"]["name"]."""
    keys, out = declared_keys(), []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                    and isinstance(node.value, ast.Subscript)
                    and isinstance(node.slice, ast.Constant) and isinstance(node.value.slice, ast.Constant)):
                key = f"{node.value.slice.value}.{node.slice.value}"
                if key in keys:
                    out.append((str(path.relative_to(ROOT)), node.lineno, key))
    return out


def problems() -> list:
    edges = graph()
    out = [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    for name, deps in sorted(edges.items()):
        if name.startswith(SCORING):
            out += [f"{name} (scoring) imports {d} (training)" for d in sorted(deps)
                    if d.startswith("siqa.training")]
    out += [f"{path}: {fn} is {n} lines (at most {MAX_FUNCTION})" for path, fn, n in long_functions()]
    out += [f"{path}:{line}: {key} read as a subscript (read it through siqa.settings.Settings)"
            for path, line, key in subscript_reads()]
    root = [p for p in PACKAGE.glob("*.py")]
    if len(root) > MAX_ROOT:
        out.append(f"{len(root)} modules at the package root (at most {MAX_ROOT})")
    return out


def stage(name) -> str:
    parts = name.split(".")
    if name == "siqa.build":  # a run's network from its config: the models stage
        return "models"
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    if name == "siqa.scoring":
        return "scoring"
    return "root"


MARKER = "<!-- below: written by scripts/architecture.py --write docs/architecture.md -->"


def markdown() -> str:
    edges = graph()
    lines = ["| module | lines | imports (siqa) |", "|---|---|---|"]
    for name, path in modules().items():
        count = len(path.read_text().splitlines())
        deps = ", ".join(sorted(d.removeprefix("siqa.") for d in edges[name])) or "-"
        lines.append(f"| `{name}` | {count} | {deps} |")
    between = sorted({(stage(a), stage(b)) for a, deps in edges.items() for b in deps
                      if stage(a) != stage(b) and "root" not in (stage(a), stage(b))},
                     key=lambda e: (STAGES.index(e[0]), STAGES.index(e[1])))
    diagram = ["```mermaid", "flowchart LR"]
    diagram += [f"    {a} --> {b}" for a, b in between]
    diagram.append("```")
    return "\n".join(diagram) + "\n\nEvery module:\n\n" + "\n".join(lines) + "\n"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 naming each broken rule")
    parser.add_argument("--write", metavar="FILE", help="write the page there (default: stdout)")
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        print("\n".join(found) if found else "architecture: no cycle, scoring imports no training "
              f"code, no function over {MAX_FUNCTION} lines, settings read through Settings")
        return 1 if found else 0
    if args.write:  # the page's own text, down to the marker, then the generated part
        page = Path(args.write)
        head = page.read_text().split(MARKER)[0] if page.is_file() else ""
        page.write_text(f"{head}{MARKER}\n\n{markdown()}")
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
