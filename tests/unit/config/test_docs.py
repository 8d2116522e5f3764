"""docs/configuration.md stays in sync with the registry, and its example configs are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from palomar.config import load
from palomar.config import settings as reg
from palomar.config.reference import BEGIN, END, generate

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"

ALL_SCOPES = {"global": reg.GLOBAL, "passdb": reg.PASSDB, "service": reg.SERVICE, "inet_listener": reg.INET_LISTENER,
              "refused section": reg.REFUSED_SECTIONS}


@pytest.mark.parametrize(
    "name", [f"{scope}:{name}" for scope, registry in ALL_SCOPES.items() for name in registry]
)
def test_every_registered_setting_is_documented(name: str) -> None:
    setting = name.split(":", 1)[1]
    assert re.search(rf"^\| `{re.escape(setting)}` \|", DOC.read_text(), re.M), f"{setting} missing from {DOC}"


def test_generated_tables_are_up_to_date() -> None:
    text = DOC.read_text()
    block = text[text.index(BEGIN): text.index(END) + len(END)]
    assert block == generate(), "run: python -m palomar.config.reference docs/configuration.md"


def test_every_service_is_documented() -> None:
    text = DOC.read_text()
    for service in reg.SERVICE_NAMES:
        assert f"| `{service}` |" in text


@pytest.mark.parametrize("role", ["proxy", "backend"])
def test_minimal_configs_in_the_docs_load(role: str, tmp_path: Path) -> None:
    blocks = re.findall(r"```conf\n(.*?)```", DOC.read_text(), re.S)
    [block] = [b for b in blocks if f"@cluster_defaults = {role}" in b]
    for secret in ("hop.secret", "probe.secret", "master.secret"):
        (tmp_path / secret).write_text(f"{secret}-value\n")
    path = tmp_path / f"{role}.conf"
    path.write_text(block.replace("</etc/palomar/", f"<{tmp_path}/"))
    cfg = load(path)
    assert cfg.role == role
    assert cfg["cluster_hop_secret"] == "hop.secret-value"
    assert cfg["cluster_local_site"] == "DC1"
