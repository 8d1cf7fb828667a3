#!/usr/bin/env python3
"""The architecture rules of docs/architecture.md, checked from the source.

1. No import circle between recast-operator's top-level modules (boot, controller, store, ...):
   each `crate::<module>` path in a module's files is an edge; a cycle fails the check.
2. recast-core's normal dependencies include no I/O crate (tokio, kube's client, rusqlite,
   reqwest, hyper): read from `cargo tree`.

Exit status 1 with the offending edges or crates; 0 and a one-line summary otherwise.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The crates whose modules must not import each other in a circle.
CRATES = {"recast-operator": os.path.join(ROOT, "operator", "src"),
          "recast-core": os.path.join(ROOT, "core", "src")}
FORBIDDEN_IN_CORE = ["tokio", "kube-client", "kube-runtime", "rusqlite", "reqwest", "hyper", "axum"]


def top_module(src_dir, path):
    rel = os.path.relpath(path, src_dir)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def module_graph(src_dir):
    """Edges between top-level modules: `crate::m` anywhere, and `super::m` in a file that sits
    directly under the crate root (where `super` is the root)."""
    modules = {f[:-3] if f.endswith(".rs") else f for f in os.listdir(src_dir)}
    modules -= {"lib", "main"}
    edges = {}
    for dirpath, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            src = top_module(src_dir, path)
            if src in ("lib", "main", "tests"):
                continue
            text = open(path, encoding="utf-8").read()
            # Test modules may reach anywhere; only production code counts.
            text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
            at_root = os.path.dirname(path) == src_dir and f != "mod.rs"
            prefixes = ["crate"] + (["super"] if at_root else [])
            for prefix in prefixes:
                for m in re.finditer(prefix + r"::([a-z_]+)", text):
                    if m.group(1) in modules and m.group(1) != src:
                        edges.setdefault(src, set()).add(m.group(1))
                for g in re.finditer(prefix + r"::\{([^}]*)\}", text):
                    for part in re.findall(r"(?:^|,)\s*([a-z_]+)(?:::|\s*(?:,|$))", g.group(1)):
                        if part in modules and part != src:
                            edges.setdefault(src, set()).add(part)
    return edges


def cycles(edges):
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return found


def core_deps():
    out = subprocess.run(
        ["cargo", "tree", "-p", "recast-core", "-e", "normal", "--prefix", "none"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    names = {line.split(" ")[0] for line in out.splitlines() if line.strip()}
    return sorted(n for n in names if n in FORBIDDEN_IN_CORE)


def main():
    failed = False
    summary = []
    for crate, src_dir in CRATES.items():
        edges = module_graph(src_dir)
        for c in cycles(edges):
            print(f"import circle in {crate}: " + " -> ".join(c))
            failed = True
        summary.append(f"{crate} {len(edges)} modules, {sum(len(v) for v in edges.values())} imports")
    bad = core_deps()
    if bad:
        print("recast-core depends on I/O crates (it must stay pure): " + ", ".join(bad))
        failed = True
    if failed:
        print("see docs/architecture.md for what each module may import")
        return 1
    print("architecture: " + "; ".join(summary) + "; no circle; recast-core has no I/O crate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
