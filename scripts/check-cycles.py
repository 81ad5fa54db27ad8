#!/usr/bin/env python3
"""Fails if modules of a crate import each other in a loop.

Reads every `crate::` and `super::` path in each crate's src/ (use statements and inline
paths), builds the module graph, and finds its strongly connected components. Modules
listed in scripts/known-cycles.txt would be tolerated in a loop; the list is empty (the
old core's loop is gone) and must stay so.

    scripts/check-cycles.py            # exit 0: no new loop
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["protocol", "consensus", "state", "node", "client", "tests"]
KNOWN = ROOT / "scripts" / "known-cycles.txt"


def module_of(src: Path, file: Path) -> str:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def strip_comments(text: str) -> str:
    """The code without comments and without its unit tests (by convention the
    `#[cfg(test)] mod tests` module closes a file; a test may use any module of its crate)."""
    text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests\b", text, maxsplit=1)[0]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def references(text: str, module: str):
    """Module paths named in `text`, relative to the crate root."""
    paths = []
    for m in re.finditer(r"\bcrate::\{([^{}]*)\}", text):
        paths += [p.strip() for p in m.group(1).split(",")]
    paths += re.findall(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text)
    parent = module.rsplit("::", 1)[0] if "::" in module else ""
    for m in re.finditer(r"\bsuper::\{([^{}]*)\}", text):
        paths += [(parent + "::" if parent else "") + p.strip() for p in m.group(1).split(",")]
    for m in re.findall(r"\bsuper::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", text):
        paths.append((parent + "::" if parent else "") + m)
    return [p for p in paths if p]


def graph(crate: str):
    src = ROOT / crate / "src"
    if not src.is_dir():
        return {}
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    modules = set(files)
    edges = {m: set() for m in modules}
    for module, file in files.items():
        for path in references(strip_comments(file.read_text()), module):
            segments = path.split("::")
            # The longest prefix of the path that is a module.
            for n in range(len(segments), 0, -1):
                target = "::".join(segments[:n])
                if target in modules:
                    if target != module and not module.startswith(target + "::") and target != "":
                        edges[module].add(target)
                    break
    return edges


def loops(edges):
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    known = set()
    if KNOWN.exists():
        known = {line.strip() for line in KNOWN.read_text().splitlines() if line.strip() and not line.startswith("#")}
    failed = False
    for crate in CRATES:
        for component in loops(graph(crate)):
            names = {f"{crate}::{m}" for m in component}
            new = sorted(names - known)
            if new:
                failed = True
                print(f"check-cycles: modules of {crate} import each other in a loop: {', '.join(sorted(names))}")
                print(f"  not in scripts/known-cycles.txt: {', '.join(new)}")
    if failed:
        print("check-cycles: break the loop (layers point one way), see ARCHITECTURE.md")
        return 1
    print("check-cycles: no new import loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
