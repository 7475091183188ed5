#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

A module is a source file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). `a` imports `b` when `a`'s
file names `crate::b` (or `super::b`, or a re-export that resolves there) outside its `#[cfg(test)]`
tests. A parent's `mod` declarations and re-exports of its own children do not count: a module may
always reach down into its children, only reaching back up (or sideways, round) makes a circle.

Usage: scripts/import-cycles.py CRATE_DIR...   (exit 1 and the circles listed when any is found)
"""
import pathlib
import re
import sys


def modules(src: pathlib.Path) -> dict:
    found = {}
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "mod":
            parts.pop()
        if parts in (["lib"], ["main"]):
            parts = []
        elif parts and parts[0] == "bin":
            continue
        found["::".join(parts)] = path
    return found


def code_outside_tests(text: str) -> str:
    # Drop the `#[cfg(test)] mod tests { ... }` block (it is always the last item here).
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    text = text[: cut.start()] if cut else text
    return re.sub(r"//[^\n]*", "", text)


def target(name: str, mods: dict):
    """The longest module path that `name` (a `crate::` path without the prefix) starts with."""
    parts = name.split("::")
    while parts:
        key = "::".join(parts)
        if key in mods:
            return key
        parts.pop()
    return ""


def edges(mods: dict) -> dict:
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        text = code_outside_tests(path.read_text())
        paths = set()
        for m in re.finditer(r"\bcrate::([A-Za-z_][\w:]*)", text):
            paths.add(m.group(1))
        # `use crate::{a, b::c}`
        for m in re.finditer(r"\bcrate::\{([^}]*)\}", text):
            for item in re.split(r"[,\s]+", m.group(1)):
                item = item.strip()
                if item and item != "self":
                    paths.add(item.split("::{")[0])
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        for m in re.finditer(r"\bsuper::([A-Za-z_][\w:]*)", text):
            paths.add((parent + "::" if parent else "") + m.group(1))
        for p in paths:
            t = target(p.rstrip(":"), mods)
            if t == "" or t == module or t.startswith(module + "::") and module:
                continue  # the crate root, itself, or one of its own children
            if module == "":
                continue  # the crate root reaches every module by declaring it
            graph[module].add(t)
    return graph


def cycles(graph: dict) -> list:
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def main() -> int:
    failed = False
    for crate in sys.argv[1:]:
        mods = modules(pathlib.Path(crate) / "src")
        for cycle in cycles(edges(mods)):
            failed = True
            print(f"{crate}: import circle: " + " -> ".join(c or "crate" for c in cycle))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
