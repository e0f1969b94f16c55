#!/usr/bin/env python3
"""Prints the import circles among src/ modules (strongly connected components of the
`crate::` reference graph, one node per file) and route modules that import other route
modules. Exit status 1 when there is either. Used by tests/architecture.rs."""
import os, re, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
mods = {}
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        p = os.path.relpath(os.path.join(d, f), root)
        parts = p[:-3].split(os.sep)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (["main"], ["lib"]):
            parts = []
        mods[tuple(parts)] = p

def strip(src):
    src = re.sub(r"//[^\n]*", "", src)
    # test modules are not part of the product graph
    i = src.find("#[cfg(test)]")
    return src if i < 0 else src[:i]

def resolve(path):
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None

edges = {m: set() for m in mods}
for m, p in mods.items():
    src = strip(open(os.path.join(root, p)).read())
    refs = []
    for u in re.finditer(r"crate::((?:\w+::)*\w+)", src):
        refs.append(u.group(1).split("::"))
    for u in re.finditer(r"use crate::(\w+)::\{([^;]*)\};", src, re.S):
        for item in re.findall(r"(\w+(?:::\w+)*)", u.group(2)):
            refs.append([u.group(1)] + item.split("::"))
    for u in re.finditer(r"(?:super::)+((?:\w+::)*\w+)", src):
        ups = u.group(0).count("super::")
        base = list(m[:len(m) - ups]) if p.endswith("mod.rs") is False else list(m[:len(m) - ups])
        if not p.endswith("mod.rs"):
            base = list(m[:len(m) - ups])
        refs.append(base + u.group(1).split("::"))
    for r in refs:
        t = resolve(r)
        if t is not None and t != m and t != ():
            # a child module named from its parent is containment, not an import
            if t[:len(m)] == m and m != ():
                continue
            if m == ():
                continue
            edges[m].add(t)

# Tarjan
index, low, stack, on, sccs = {}, {}, [], set(), []
def strong(v, counter=[0]):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(comp)
sys.setrecursionlimit(10000)
for v in edges:
    if v not in index:
        strong(v)
bad = 0
for c in sccs:
    if len(c) > 1:
        bad = 1
        print("circle:", ", ".join(sorted(mods[x] for x in c)))
        for x in sorted(c):
            print("   ", mods[x], "->", ", ".join(sorted(mods[y] for y in edges[x] if y in c)))
for m, ts in edges.items():
    if m[:1] == ("routes",) and len(m) > 1:
        for t in ts:
            if t[:1] == ("routes",) and len(t) > 1 and t[:len(m)] != m and m[:len(t)] != t:
                bad = 1
                print("route imports route:", mods[m], "->", mods[t])
sys.exit(bad)
