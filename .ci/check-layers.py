#!/usr/bin/env python3
"""Checks the workspace's layering: the crate graph (store, train, serve and onnx depend on
mlops-core only) and, inside every crate, that no module imports a module that
imports it back (directly or through others). Prints the cycles it finds and exits
non-zero. Reads `use crate::...` and `use super::...` lines (and `crate::x::` paths
in code) of non-test code, comments left out; a module is a file, `mod.rs` standing
for its folder. A child's use of its own ancestors' items (a folder's files
implementing the type its `mod.rs` declares) is the module tree, not an edge."""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = {"mlops-core": "mlops_core", "mlops-store": "mlops_store",
          "mlops-train": "mlops_train", "mlops-serve": "mlops_serve",
          "mlops-onnx": "mlops_onnx"}


def module_of(src: pathlib.Path, file: pathlib.Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text: str) -> str:
    # Drop `#[cfg(test)] mod tests { ... }` blocks: test code may reach anywhere.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod \w+ \{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def edges_of(src: pathlib.Path) -> dict:
    modules = {module_of(src, f): f for f in src.rglob("*.rs")}
    edges = {m: set() for m in modules}

    def resolve(path: tuple) -> tuple:
        # The longest prefix of `path` that is a module.
        for n in range(len(path), 0, -1):
            if path[:n] in modules:
                return path[:n]
        return ()

    for mod, file in modules.items():
        text = strip_tests(file.read_text())
        # Comments (doc links included) are not imports.
        text = re.sub(r"//[^\n]*", "", text)
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            names = tuple(m.group(2).strip(":").split("::"))
            if m.group(1) == "crate":
                base = ()
            else:
                # `super` is the parent module (of a file, or of a folder's mod.rs).
                base = mod[:-1]
                while names and names[0] == "super":
                    base, names = base[:-1], names[1:]
            target = resolve(base + names)
            if target and target != mod and not (mod[: len(target)] == target):
                edges[mod].add(target)
    return edges


def cycles(edges: dict) -> list:
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(edges.get(n, ())):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return found


def main() -> int:
    bad = 0
    for crate in CRATES:
        for cyc in cycles(edges_of(ROOT / crate / "src")):
            bad += 1
            print(f"{crate}: import cycle: " + " -> ".join("::".join(m) or "lib" for m in cyc))
    for crate in ("mlops-store", "mlops-train", "mlops-serve", "mlops-onnx"):
        deps = subprocess.run(["cargo", "tree", "-p", crate, "-e", "normal", "--depth", "1",
                               "--prefix", "none", "-f", "{p}"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout
        ours = {l.split(" ")[0] for l in deps.splitlines()[1:]} & (set(CRATES) | {"mlops"})
        if ours - {"mlops-core"}:
            bad += 1
            print(f"{crate} depends on {sorted(ours - {'mlops-core'})}: only mlops-core is allowed")
    print("layers: ok" if not bad else f"layers: {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
