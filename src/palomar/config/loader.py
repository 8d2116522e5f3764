"""Load a palomar configuration: parse, check every name and value, fill defaults, cross-check.

`load()` either returns a fully typed `Config` or raises one `ConfigError` listing every
problem with its `file:line`; nothing unknown or unsupported is ever ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from palomar.config import seed_blocks
from palomar.config import settings as reg
from palomar.config.derived import DERIVED
from palomar.config.errors import ConfigError, Issue, Location
from palomar.config.model import (
    ListenerSettings,
    PassdbSettings,
    ServiceSettings,
)
from palomar.config.parser import Assignment, GroupInclude, Section, parse_file
from palomar.config.validate import cross_check
from palomar.config.values import split_list

OVERRIDE = Location("<override>", 0)
SEED_SECTIONS = ("metric", "cluster_geodb", "cluster_localdb", "metacache_last_host")
"""Top-level blocks of the seed's `@cluster_defaults` expansions (checked against config/seed_blocks.py)."""


class Config:
    """A loaded configuration. `cfg[name]` gives the typed value of a top-level setting (default applied)."""

    def __init__(self) -> None:
        self.role: str | None = None
        self.metric_role: str | None = None
        self.role_location: Location | None = None
        self.source_files: list[str] = []
        self.passdbs: list[PassdbSettings] = []
        self.services: dict[str, ServiceSettings] = {}
        # Where each explicitly written service / listener is, for messages and `config show`.
        self.service_locations: dict[str, Location] = {}
        self.listener_locations: dict[tuple[str, str], Location] = {}
        self.listener_explicit: dict[tuple[str, str], set[str]] = {}
        self._values: dict[str, Any] = {}
        self._locations: dict[str, Location] = {}

    def __getitem__(self, name: str) -> Any:
        setting = reg.GLOBAL.get(name)
        if setting is None:
            raise KeyError(f"unknown setting {name!r}")
        if name in self._values:
            return self._values[name]
        derive = DERIVED.get(name)
        return setting.default_value if derive is None else derive(self)

    def is_set(self, name: str) -> bool:
        """Whether the configuration assigns `name` explicitly (even to its default)."""
        if name not in reg.GLOBAL:
            raise KeyError(f"unknown setting {name!r}")
        return name in self._values

    def location(self, name: str) -> Location | None:
        """Where `name` was last assigned, or None if it was not."""
        return self._locations.get(name)

    @property
    def doveadm_tcp_port(self) -> int:
        """The port of `service doveadm { inet_listener tcp }` (doveadm_port unless the block sets one;
        0: none). A proxy listens there; a backend's local Dovecot does, on cluster_backend_dovecot_host."""
        service = self.services.get("doveadm")
        listener = service.listeners.get(reg.DOVEADM_LISTENER) if service is not None else None
        return listener.port if listener is not None else 0

    @property
    def set_names(self) -> list[str]:
        """Explicitly assigned top-level settings, in registry order."""
        return [name for name in reg.GLOBAL if name in self._values]

    def effective(self, include_defaults: bool = False) -> list[tuple[str, str]]:
        """Top-level settings as (name, text), group includes first; secrets read `# hidden`.

        With `include_defaults`, settings left at their defaults are listed too (those of this role).
        """
        pairs: list[tuple[str, str]] = []
        if self.role:
            pairs.append(("@cluster_defaults", self.role))
        if self.metric_role:
            pairs.append(("@metric_defaults", self.metric_role))
        for name, setting in reg.GLOBAL.items():
            if setting.unsupported or not (name in self._values or include_defaults and setting.applies_to(self.role)):
                continue
            text = setting.type.format(self[name])
            pairs.append((name, "# hidden" if setting.secret and text else text))
        return pairs

    def __repr__(self) -> str:
        return f"<Config role={self.role} files={self.source_files} settings={len(self._values)}>"


def load(path: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """Load `path` (and its includes); `overrides` are top-level `name: value` pairs applied last."""
    parsed = parse_file(path)
    builder = _Builder(parsed.files[0])
    cfg = builder.cfg
    cfg.source_files = parsed.files
    builder.walk(parsed.root)
    for key, value in (overrides or {}).items():
        if key.startswith("@"):
            builder.group(GroupInclude(key[1:], value, OVERRIDE))
        else:
            builder.set_global(key, value, OVERRIDE)
    builder.check_roles()
    builder.build_services()
    if not builder.issues:
        builder.issues.extend(cross_check(cfg, Location(parsed.files[0], 0)))
    if builder.issues:
        raise ConfigError(sorted(builder.issues, key=lambda issue: _position(issue, parsed.files)))
    return cfg


def _position(issue: Issue, files: list[str]) -> tuple[int, int]:
    """Sort key: problems in file order, then line order; overrides last."""
    location = issue.location
    if location is None or location.file not in files:
        return (len(files), 0)
    return (files.index(location.file), location.line)


def _unknown(name: str, known: list[str] | dict[str, Any], what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{name}: unknown {what}{hint}"


class _Builder:
    def __init__(self, main_file: str) -> None:
        self.cfg = Config()
        self.issues: list[Issue] = []
        self.main_file = main_file
        self._service_sections: dict[str, list[Section]] = {}

    def error(self, location: Location | None, message: str) -> None:
        self.issues.append(Issue(location, message))

    # --- top level -------------------------------------------------------------------------------------

    def walk(self, root: Section) -> None:
        for node in root.children:
            if isinstance(node, Assignment):
                self.set_global(node.key, node.value, node.location)
            elif isinstance(node, GroupInclude):
                self.group(node)
            elif node.kind == "passdb":
                self.database(node, reg.PASSDB, PassdbSettings, self.cfg.passdbs)
            elif node.kind in reg.REFUSED_SECTIONS:
                self.error(node.location, f"{node.title}: {reg.REFUSED_SECTIONS[node.kind]}")
            elif node.kind == "service":
                self.service_section(node)
            elif node.kind == "dict_server":
                self.dict_server(node)
            elif node.kind in SEED_SECTIONS:
                self.seed_section(node)
            else:
                self.unknown_section(node, reg.GLOBAL)

    def unknown_section(self, node: Section, scope: dict[str, reg.Setting]) -> None:
        setting = scope.get(node.kind)
        if setting is not None and setting.unsupported:
            self.error(node.location, f"{node.kind}: {setting.unsupported}")
        elif setting is not None:
            self.error(node.location, f"{node.kind}: is a setting, not a section (write {node.kind} = value)")
        else:
            known = ["passdb", "userdb", "service", "dict_server", *SEED_SECTIONS] if scope is reg.GLOBAL else []
            self.error(node.location, _unknown(node.kind, known, "section"))

    def set_global(self, key: str, text: str, location: Location) -> None:
        setting = reg.GLOBAL.get(key)
        if setting is None:
            self.error(location, _unknown(key, reg.GLOBAL, "setting"))
            return
        if setting.unsupported:
            self.error(location, f"{key}: {setting.unsupported}")
            return
        try:
            value = setting.parse(text)
        except ValueError as exc:
            self.error(location, f"{key}: {_safe(setting, exc)}")
            return
        self.cfg._values[key] = value
        self.cfg._locations[key] = location

    def group(self, node: GroupInclude) -> None:
        allowed = reg.GROUPS.get(node.name)
        if allowed is None:
            known = ", ".join(f"@{g}" for g in reg.GROUPS)
            self.error(node.location, f"@{node.name}: unknown group include; known: {known}")
            return
        if node.value not in allowed:
            self.error(node.location, f"@{node.name}: expected {' or '.join(allowed)}, got {node.value!r}")
            return
        if node.name == "cluster_defaults":
            if self.cfg.role is not None and self.cfg.role != node.value:
                self.error(node.location, f"@cluster_defaults: already set to {self.cfg.role} "
                                          f"at {self.cfg.role_location}")
                return
            self.cfg.role, self.cfg.role_location = node.value, node.location
        else:
            self.cfg.metric_role = node.value

    def check_roles(self) -> None:
        cfg = self.cfg
        if cfg.role and cfg.metric_role and cfg.role != cfg.metric_role:
            self.error(cfg.role_location, f"@metric_defaults = {cfg.metric_role} does not match "
                                          f"@cluster_defaults = {cfg.role}")
        for name in cfg.set_names:
            setting = reg.GLOBAL[name]
            if not setting.applies_to(cfg.role):
                self.error(cfg.location(name), f"{name}: applies only to a {setting.roles}, but this is a "
                                               f"{cfg.role} (@cluster_defaults = {cfg.role})")

    # --- sections --------------------------------------------------------------------------------------

    def _settings(self, section: Section, scope: reg.Registry, where: str) -> dict[str, tuple[Any, Location]]:
        """Typed assignments of one section; nested sections and group includes are the caller's."""
        values: dict[str, tuple[Any, Location]] = {}
        for node in section.children:
            if isinstance(node, GroupInclude):
                self.error(node.location, f"@{node.name}: group includes are only allowed at the top level")
            elif isinstance(node, Assignment):
                setting = scope.get(node.key)
                if setting is None:
                    self.error(node.location, _unknown(node.key, scope, f"setting in {where}"))
                    continue
                try:
                    values[node.key] = (setting.parse(node.value), node.location)
                except ValueError as exc:
                    self.error(node.location, f"{node.key}: {_safe(setting, exc)}")
        return values

    def database(self, node: Section, scope: reg.Registry, kind: type, into: list) -> None:
        where = f"{node.kind} {node.label}" if node.label else node.kind
        fields: dict[str, dict[str, str]] = {name: {} for name in reg.FIELD_SECTIONS}
        plain = Section(node.kind, node.label, node.location)
        for child in node.children:
            if isinstance(child, Section):
                if child.kind in reg.FIELD_SECTIONS and child.label is None:
                    fields[child.kind].update(self.field_section(child))
                else:
                    self.error(child.location, _unknown(child.kind, list(reg.FIELD_SECTIONS), f"section in {where}"))
            elif isinstance(child, Assignment) and child.key in reg.FIELD_SECTIONS:
                fields[child.key].update(self.field_words(child))
            else:
                plain.children.append(child)
        values = self._settings(plain, scope, where)
        driver = values.get("driver", ("", None))[0]
        if not driver:
            self.error(node.location, f"{where}: driver is required (e.g. driver = passwd-file)")
            return
        name = node.label or driver
        if node.label and any(db.name == node.label for db in into):
            self.error(node.location, f"{where}: defined twice")
            return
        settings = {key: value for key, (value, _) in values.items()}
        into.append(kind(name=name, **settings, **fields))

    def field_section(self, node: Section) -> dict[str, str]:
        result: dict[str, str] = {}
        for child in node.children:
            if isinstance(child, Assignment):
                result[child.key] = child.value
            elif isinstance(child, Section):
                self.error(child.location, f"{child.kind}: sections are not allowed in {node.kind}")
            else:
                self.error(child.location, f"@{child.name}: group includes are only allowed at the top level")
        return result

    def field_words(self, node: Assignment) -> dict[str, str]:
        """`default_fields = key=value key2=value2` (the older one-line form)."""
        result: dict[str, str] = {}
        for word in split_list(node.value.replace(",", " ")):
            key, sep, value = word.partition("=")
            result[key] = value if sep else "yes"
        return result

    def dict_server(self, node: Section) -> None:
        """The seed's dicts: their maps must be the seed's; the keyspace and LocalDB path are settings."""
        seed = seed_blocks.reference("dict_server", None)
        assert seed is not None
        self.seed_mismatches(node, seed)
        for child in node.children:
            if isinstance(child, GroupInclude):
                self.error(child.location, f"@{child.name}: group includes are only allowed at the top level")
            elif isinstance(child, Section) and child.kind == "dict":
                for item in child.children:
                    if isinstance(item, Assignment) and item.key in seed_blocks.TUNABLE_KEYS:
                        target = seed_blocks.TUNABLE.get((child.label or "", item.key))
                        if target is None:
                            self.error(item.location, f"{item.key}: not a setting of dict {child.label}")
                        else:
                            self.set_global(target, item.value, item.location)

    def seed_section(self, node: Section) -> None:
        """`metric NAME`, `cluster_geodb`, `cluster_localdb`, `metacache_last_host`: the seed's, or refused."""
        seed = seed_blocks.reference(node.kind, node.label)
        if seed is None:
            if node.kind == "metric":
                known = ", ".join(seed_blocks.seed_metric_names())
                self.error(node.location, f"{node.title}: palomar cannot evaluate Dovecot event filters; it "
                                          f"exports the Palomar document's metrics ({known}) and its own")
            else:
                self.error(node.location, f"{node.title}: the Palomar document has no such block")
            return
        self.seed_mismatches(node, seed)

    def seed_mismatches(self, node: Section, seed: Section) -> None:
        for child, reason in seed_blocks.differences(node, seed):
            self.error(child.location, f"{node.title}: {reason}; palomar implements exactly the document's "
                                       "blocks (docs/configuration.md, \"The Palomar document's blocks\")")

    @staticmethod
    def is_seed_listener(service: Section, listener: Section) -> bool:
        """A unix listener exactly as the `@cluster_defaults` expansion writes it in `service cluster`."""
        seed = seed_blocks.reference("service", "cluster")
        if service.label != "cluster" or seed is None:
            return False
        return any(isinstance(c, Section) and seed_blocks.canonical(c) == seed_blocks.canonical(listener)
                   for c in seed.children)

    def service_section(self, node: Section) -> None:
        if node.label is None:
            self.error(node.location, "service: needs a name, e.g. service imap-login { ... }")
        elif node.label not in reg.SERVICE_NAMES:
            self.error(node.location, f"service {node.label}: unknown service; known: {', '.join(reg.SERVICE_NAMES)}")
        else:
            self._service_sections.setdefault(node.label, []).append(node)
            self.cfg.service_locations.setdefault(node.label, node.location)

    def build_services(self) -> None:
        """Merge every `service` block over Dovecot's defaults; runs once the globals are known."""
        cfg = self.cfg
        for name in reg.SERVICE_NAMES:
            service = ServiceSettings(name)
            raw: dict[str, dict[str, Any]] = {}
            # A backend's clients are proxies on cluster_hop_port: Dovecot's client listeners are not its
            for listener, port, tls in () if cfg.role == "backend" else reg.DEFAULT_LISTENERS.get(name, ()):
                raw[listener] = {"port": port, "ssl": tls}
            if name == "doveadm":
                raw[reg.DOVEADM_LISTENER] = {"port": cfg["doveadm_port"]}
            for section in self._service_sections.get(name, []):
                self.service_body(section, service, raw)
            for listener, values in raw.items():
                if values.get("port", 0) == 0:
                    service.disabled_listeners.append(listener)
                    continue
                if values.get("ssl") and cfg["ssl"] == "no" and (name, listener) not in cfg.listener_explicit:
                    continue  # a default TLS listener: `ssl = no` turns it off (an explicit one is an error)
                service.listeners[listener] = ListenerSettings(
                    listener,
                    values["port"],
                    values.get("address") or list(cfg["listen"]),
                    values.get("haproxy", False),
                    values.get("ssl", False),
                )
            cfg.services[name] = service

    def service_body(self, section: Section, service: ServiceSettings, raw: dict[str, dict[str, Any]]) -> None:
        where = f"service {service.name}"
        plain = Section(section.kind, section.label, section.location)
        for child in section.children:
            if not isinstance(child, Section):
                plain.children.append(child)
            elif child.kind == "unix_listener" and self.is_seed_listener(section, child):
                continue  # the Palomar document's own `service cluster` sockets: a documented no-op
            elif child.kind in reg.REFUSED_SECTIONS:
                self.error(child.location, f"{where} {{ {child.title} }}: {reg.REFUSED_SECTIONS[child.kind]}")
            elif child.kind != "inet_listener":
                self.error(child.location, _unknown(child.kind, ["inet_listener"], f"section in {where}"))
            elif child.label is None:
                self.error(child.location, f"{child.kind}: needs a name in {where}")
            else:
                self.listener(child, service, raw, where)
        for key, (value, _) in self._settings(plain, reg.SERVICE, where).items():
            setattr(service, key, value)

    def listener(self, node: Section, service: ServiceSettings, raw: dict[str, dict[str, Any]], where: str) -> None:
        assert node.label is not None
        inner = f"{where} {{ {node.title} }}"
        for child in node.children:
            if isinstance(child, Section):
                self.error(child.location, f"{child.title}: sections are not allowed in {inner}")
        values = self._settings(node, reg.INET_LISTENER, inner)
        raw.setdefault(node.label, {}).update({key: value for key, (value, _) in values.items()})
        key = (service.name, node.label)
        self.cfg.listener_locations.setdefault(key, node.location)
        self.cfg.listener_explicit.setdefault(key, set()).update(values)


def _safe(setting: reg.Setting, exc: ValueError) -> str:
    """A value error's message, without echoing a secret's text."""
    return "invalid value" if setting.secret else str(exc)
