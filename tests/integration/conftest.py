"""Session fixtures for integration tests: a shared mail root, two real Dovecot backends, an SMTP sink."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from palomar.devcluster.dovecot import DovecotInstance, backend_params, ensure_mail_user
from palomar.devcluster.smtp_sink import SmtpSink

BACKEND_ADDRESSES = {"backend1": "127.0.0.2", "backend2": "127.0.0.3"}


@pytest.fixture(scope="session")
def harness_root() -> Iterator[Path]:
    """A world-traversable directory for the session's servers.

    pytest's own tmp dirs are 0700 root; Dovecot's unprivileged processes (vmail, dovecot)
    must reach sockets and mailboxes below this one.
    """
    root = Path(tempfile.mkdtemp(prefix="palomar-it-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mail_root(harness_root: Path) -> Path:
    """The one mail directory shared by every backend (as NFS would be)."""
    user = ensure_mail_user("vmail")
    path = harness_root / "mail"
    path.mkdir()
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    """Where the backends' submission service relays mail."""
    sink = SmtpSink("127.0.0.1").start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def dovecot_backends(harness_root: Path, mail_root: Path, smtp_sink: SmtpSink) -> Iterator[dict[str, DovecotInstance]]:
    """backend1 on 127.0.0.2 and backend2 on 127.0.0.3, sharing `mail_root`, master user palomar-master."""
    instances = {
        name: DovecotInstance(backend_params(name, addr, harness_root, mail_root,
                                             relay=(smtp_sink.host, smtp_sink.port)))
        for name, addr in BACKEND_ADDRESSES.items()
    }
    try:
        for instance in instances.values():
            instance.start()
        yield instances
    finally:
        for instance in instances.values():
            instance.stop()
