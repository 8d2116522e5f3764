"""Render a loaded Config back in Dovecot syntax for `palomar config show` (secrets masked)."""

from __future__ import annotations

from palomar.config import settings as reg
from palomar.config.loader import Config
from palomar.config.model import PassdbSettings, ServiceSettings, is_secret_field


def _quote(text: str) -> str:
    """Quote values that would not read back unchanged (comments, braces, edge spaces)."""
    if text == "# hidden" or not text:
        return text
    if text != text.strip() or any(ch in text for ch in "#\"'") or text.endswith("\\") or text.startswith("<"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render(cfg: Config, include_defaults: bool = False) -> list[str]:
    """Lines of a config equivalent to `cfg`: non-default settings, or everything with `include_defaults`."""
    lines = [f"{name} = {_quote(value)}".rstrip() for name, value in cfg.effective(include_defaults)]
    for db in cfg.passdbs:
        lines += _database(db, include_defaults)
    for name, service in cfg.services.items():
        if include_defaults or name in cfg.service_locations:
            lines += _service(service, cfg, include_defaults)
    return lines


def _database(db: PassdbSettings, include_defaults: bool) -> list[str]:
    lines = [f"passdb {db.name} {{"]
    for name, setting in reg.PASSDB.items():
        value = getattr(db, name)
        if include_defaults or value != setting.default_value:
            lines.append(f"  {name} = {_quote(setting.type.format(value))}")
    for section in reg.FIELD_SECTIONS:
        fields = getattr(db, section)
        if fields:
            lines.append(f"  {section} {{")
            for key, value in fields.items():
                shown = "# hidden" if value and is_secret_field(key) else _quote(value)
                lines.append(f"    {key} = {shown}")
            lines.append("  }")
    lines.append("}")
    return lines


def _service(service: ServiceSettings, cfg: Config, include_defaults: bool) -> list[str]:
    lines = [f"service {service.name} {{"]
    for name, setting in reg.SERVICE.items():
        value = getattr(service, name)
        if include_defaults or value != setting.default_value:
            lines.append(f"  {name} = {setting.type.format(value)}")
    for listener in service.listeners.values():
        explicit = cfg.listener_explicit.get((service.name, listener.name), set())
        if not (include_defaults or explicit):
            continue
        lines.append(f"  inet_listener {listener.name} {{")
        for name, setting in reg.INET_LISTENER.items():
            if include_defaults or name in explicit:
                lines.append(f"    {name} = {setting.type.format(getattr(listener, name))}")
        lines.append("  }")
    for name in service.disabled_listeners:
        if include_defaults or (service.name, name) in cfg.listener_explicit:
            lines += [f"  inet_listener {name} {{", "    port = 0", "  }"]
    lines.append("}")
    return lines
