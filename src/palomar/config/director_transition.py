"""Reading the file `cluster_director_transition_config` names (Dovecot config syntax).

    director_username_hash = %Lu          # as on the director (default %Lu)
    mail_server 10.0.0.11 {               # one section per director_mail_servers address
      backend = mail1.example.com         # its palomar backend (cluster_backend_name); default: the IP
      vhost_count = 100                   # as `doveadm director status` shows it (default 100)
      state = up                          # up or down, as `doveadm director status` shows it
    }

Every problem is reported with its `file:line`, so `palomar config check` points at it.
"""

from __future__ import annotations

from pathlib import Path

from palomar.cluster.director_hash import (
    DEFAULT_USERNAME_HASH,
    DEFAULT_VHOST_COUNT,
    DirectorHashError,
    DirectorRing,
    MailHost,
)
from palomar.cluster.director_transition import DirectorTransition
from palomar.config.errors import ConfigError, Issue, Location
from palomar.config.parser import Assignment, Section, parse_file

_SERVER_KEYS = ("backend", "vhost_count", "state")


def _server(node: Section, issues: list[Issue]) -> tuple[MailHost, str] | None:
    values: dict[str, str] = {}
    where: dict[str, Location] = {}
    for child in node.children:
        if isinstance(child, Assignment) and child.key in _SERVER_KEYS:
            values[child.key], where[child.key] = child.value, child.location
        elif isinstance(child, Assignment) and child.key == "tag":
            issues.append(Issue(child.location, "tag: tagged director rings are not supported (untagged only)"))
        else:
            what = child.key if isinstance(child, Assignment) else getattr(child, "kind", "@")
            issues.append(Issue(child.location, f"{what}: unknown in mail_server (expected "
                                                f"{', '.join(_SERVER_KEYS)})"))
    if not node.label:
        issues.append(Issue(node.location, "mail_server needs the server's IP address: mail_server IP { ... }"))
        return None
    count_text = values.get("vhost_count", str(DEFAULT_VHOST_COUNT))
    if not count_text.isdigit():
        issues.append(Issue(where["vhost_count"], f"mail_server {node.label}: vhost_count {count_text!r} is "
                                                  "not a number"))
        return None
    state = values.get("state", "up")
    if state not in ("up", "down"):
        issues.append(Issue(where["state"], f"mail_server {node.label}: state {state!r}: expected up or down"))
        return None
    try:
        host = MailHost(node.label, int(count_text), state == "down")
    except DirectorHashError as exc:
        issues.append(Issue(node.location, str(exc)))
        return None
    backend = values.get("backend", host.ip).strip()
    if not backend:
        issues.append(Issue(where["backend"], f"mail_server {node.label}: empty backend name"))
        return None
    return host, backend


def load_transition(path: str | Path) -> DirectorTransition:
    """The transition described by the file at `path`; ConfigError listing every problem."""
    parsed = parse_file(path)  # unreadable files and syntax errors are ConfigErrors already
    issues: list[Issue] = []
    username_hash = DEFAULT_USERNAME_HASH
    hash_at: Location | None = None
    servers: list[tuple[MailHost, str, Location]] = []
    for node in parsed.root.children:
        if isinstance(node, Assignment) and node.key == "director_username_hash":
            username_hash, hash_at = node.value, node.location
        elif isinstance(node, Section) and node.kind == "mail_server":
            found = _server(node, issues)
            if found is not None:
                servers.append((*found, node.location))
        else:
            what = node.key if isinstance(node, Assignment) else getattr(node, "kind", None) or "@" + node.name
            issues.append(Issue(node.location, f"{what}: unknown in a director transition config "
                                               "(expected director_username_hash and mail_server sections)"))
    seen: dict[str, Location] = {}
    for host, _backend, at in servers:
        if host.ip in seen:
            issues.append(Issue(at, f"mail_server {host.ip} is listed twice (first at {seen[host.ip]})"))
        seen.setdefault(host.ip, at)
    if not servers and not issues:
        issues.append(Issue(Location(str(path), 0), "no mail_server sections: the director ring is empty"))
    ring = None
    if not issues:
        try:
            ring = DirectorRing(tuple(host for host, _b, _at in servers), username_hash)
        except DirectorHashError as exc:
            issues.append(Issue(hash_at or Location(str(path), 0), str(exc)))
    if issues or ring is None:
        raise ConfigError(issues)
    return DirectorTransition(ring, {host.ip: backend for host, backend, _at in servers})


def transition_from_config(cfg: object) -> DirectorTransition | None:
    """The transition a loaded palomar config names, or None when the setting is empty."""
    path = cfg["cluster_director_transition_config"]  # type: ignore[index]
    return load_transition(path) if path else None
