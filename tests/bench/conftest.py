"""Tests of the benchmark helpers in bench/: they import as top-level modules, as the script does."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from palomar.devcluster.dovecot import DovecotInstance, backend_params, ensure_mail_user  # noqa: E402


@pytest.fixture(scope="module")
def backend() -> Iterator[DovecotInstance]:
    """One real Dovecot CE backend (master-user logins only), as palomar runs it."""
    root = Path(tempfile.mkdtemp(prefix="palomar-bench-test-"))
    root.chmod(0o755)
    user = ensure_mail_user("vmail")
    mail = root / "mail"
    mail.mkdir()
    os.chown(mail, user.pw_uid, user.pw_gid)
    instance = DovecotInstance(backend_params("backend1", "127.0.0.2", root / "dovecot", mail))
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
