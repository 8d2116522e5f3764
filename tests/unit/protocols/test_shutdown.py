"""The shutdown line: Dovecot's wording per protocol, one table read by the proxy and the backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import palomar.backend
from palomar.protocols.shutdown import SHUTDOWN, shutdown_line
from palomar.proxy.failures import WORDING


@pytest.mark.parametrize("protocol,line", [
    ("imap", b"* BYE Server shutting down.\r\n"),
    ("pop3", b"-ERR [SYS/TEMP] Server shutting down.\r\n"),
    ("submission", b"421 4.3.2 mx1.example.test Server shutting down\r\n"),
    ("lmtp", b"421 4.3.2 mx1.example.test Server shutting down\r\n"),
    ("sieve", b'BYE "Server shutting down."\r\n'),
    ("doveadm", b""),
])
def test_shutdown_lines_are_worded_as_dovecot_words_them(protocol: str, line: bytes) -> None:
    assert shutdown_line(protocol, "mx1.example.test") == line


def test_the_proxy_table_takes_its_shutdown_lines_from_the_shared_one() -> None:
    assert set(WORDING) == set(SHUTDOWN)
    assert all(WORDING[p].shutdown is SHUTDOWN[p] for p in WORDING)


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_backend_does_not_depend_on_proxy_code() -> None:
    package = Path(palomar.backend.__file__).parent
    offenders = {str(path.relative_to(package)): sorted(m for m in _imported_modules(path)
                                                          if m == "palomar.proxy" or m.startswith("palomar.proxy."))
                 for path in sorted(package.rglob("*.py"))}
    assert {path: mods for path, mods in offenders.items() if mods} == {}
