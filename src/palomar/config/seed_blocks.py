"""What `@cluster_defaults = proxy|backend` stands for in the Palomar document, kept as the reference.

The seed lists the blocks each group expands to (seed/cluster_defaults_*.conf, copied verbatim
from it but for one stray closing brace the document's formatting left after each list). In
Dovecot Pro they wire Dovecot's dict server, its `cluster` service and its stats to the GeoDB.
palomar does that work in-process: its GeoDB engines have the seed's tables and dict_map queries
built in, the proxy routes without an auth socket, and it exports the seed's metrics itself.

So a configuration may write these blocks out (an operator who copied the expansion), and
each element it writes must say what the seed says: anything else would ask for something
palomar does not do, and is refused. Elements a block leaves out keep the seed's meaning.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from palomar.config.parser import Assignment, Section, parse_file

SEED_DIR = Path(__file__).resolve().parent / "seed"
ROLES = ("proxy", "backend")
TUNABLE = {("cluster-geodb", "cassandra_keyspace"): "cassandra_keyspace",
           ("cluster-localdb", "sqlite_path"): "cluster_localdb_path"}
"""(dict, key) inside `dict_server` that carry the operator's value -> the top-level setting it sets."""
TUNABLE_KEYS = {key for _, key in TUNABLE}

Canonical = tuple


def canonical(node: Assignment | Section) -> Canonical:
    """A comparable form: values with spaces collapsed, children in any order."""
    if isinstance(node, Assignment):
        return ("=", node.key, re.sub(r"\s+", " ", node.value.strip()))
    children = tuple(sorted((canonical(c) for c in node.children if isinstance(c, Assignment | Section)),
                            key=repr))
    return (node.kind, node.label, children)


def identity(node: Assignment | Section) -> tuple[str, str | None]:
    """What names an element among its siblings: a key, or a section kind and label."""
    return ("=", node.key) if isinstance(node, Assignment) else (node.kind, node.label)


@cache
def expansion(role: str) -> Section:
    """The parsed blocks `@cluster_defaults = ROLE` stands for."""
    return parse_file(SEED_DIR / f"cluster_defaults_{role}.conf").root


def reference(kind: str, label: str | None) -> Section | None:
    """The seed's top-level block `kind [label]` (from either role's expansion), or None."""
    for role in ROLES:
        for node in expansion(role).children:
            if isinstance(node, Section) and (node.kind, node.label) == (kind, label):
                return node
    return None


def seed_metric_names() -> list[str]:
    """The `metric NAME { }` blocks of the seed's expansions."""
    return sorted({node.label for role in ROLES for node in expansion(role).children
                   if isinstance(node, Section) and node.kind == "metric" and node.label})


def differences(written: Section, seed: Section) -> list[tuple[Assignment | Section, str]]:
    """Elements of `written` that are not the seed's, each with a reason; TUNABLE keys are the caller's."""
    by_identity = {identity(c): c for c in seed.children if isinstance(c, Assignment | Section)}
    found: list[tuple[Assignment | Section, str]] = []
    for child in written.children:
        if not isinstance(child, Assignment | Section):
            continue
        if isinstance(child, Assignment) and child.key in TUNABLE_KEYS:
            continue
        ours = by_identity.get(identity(child))
        name = f"{child.key} = {child.value}" if isinstance(child, Assignment) else child.title
        if ours is None:
            found.append((child, f"{name}: not in the Palomar document's {written.title}"))
        elif isinstance(child, Section) and isinstance(ours, Section) and child.kind == "dict":
            found += differences(child, ours)  # a dict is merged element by element, like the group
        elif canonical(child) != canonical(ours):
            found.append((child, f"{name}: differs from the Palomar document's"))
    return found
