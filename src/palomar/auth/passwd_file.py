"""Dovecot's passwd-file passdb: ``user:password:uid:gid:gecos:home:shell:extra_fields``.

The file is re-read whenever its mtime, size or inode changes, so operators can edit it
(or replace it atomically) without restarting anything. A bad line is skipped with a
warning naming the file and line number, never its content (it may hold a hash), so one
typo cannot lock every user out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from palomar.auth.driver import DriverLookup, compile_fields, parse_field_list
from palomar.auth.schemes import DEFAULT_SCHEME, is_known_scheme
from palomar.auth.variables import Template, VariableError

log = logging.getLogger(__name__)

_EXTRA_FIELDS_INDEX = 7


class PasswdFileError(Exception):
    """The file cannot be read (missing, permissions); a lookup must fail temporarily."""


class PasswdArgsError(ValueError):
    """The passdb ``args`` string is not valid for passwd-file."""


@dataclass(frozen=True)
class PasswdEntry:
    """One user line. Only ``user`` and ``password`` matter to a passdb."""

    user: str
    password: str | None = field(repr=False)
    uid: str = ""
    gid: str = ""
    home: str = ""
    extra_fields: tuple[tuple[str, Template], ...] = field(default=(), repr=False)


def parse_line(line: str) -> PasswdEntry | None:
    """Parse one line; None for blank lines and comments, ValueError when malformed.

    Extra fields may contain ``:`` (IPv6 ``allow_nets``), so everything after the seventh
    colon belongs to them, as in Dovecot.
    """
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    parts = line.rstrip("\r\n").split(":")
    user = parts[0]
    if not user or any(c.isspace() or ord(c) < 32 for c in user):
        raise ValueError("empty or invalid user name")
    if "\0" in line:
        raise ValueError("line contains NUL")
    column = parts + [""] * (_EXTRA_FIELDS_INDEX - len(parts))
    password = column[1] or None
    extra = ":".join(parts[_EXTRA_FIELDS_INDEX:])
    try:
        extra_fields = compile_fields(parse_field_list(extra))
    except VariableError as exc:
        raise ValueError(f"bad extra field: {exc}") from None
    return PasswdEntry(user, password, column[2], column[3], column[5], extra_fields)


class PasswdFile:
    """A passwd-file kept in memory and refreshed when the file on disk changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, PasswdEntry] = {}

    def __repr__(self) -> str:
        return f"PasswdFile({self.path!r}, users={len(self._users)})"

    def lookup(self, user: str) -> PasswdEntry | None:
        """The entry for ``user``, reloading first if the file changed. Raises PasswdFileError."""
        with self._lock:
            self._refresh()
            return self._users.get(user)

    def lookup_nowait(self, user: str) -> tuple[bool, PasswdEntry | None]:
        """(True, entry) when the file in memory is current, without blocking the caller:
        one stat and a dict lookup. (False, None) when the file must be (re)read, or another
        thread holds the lock, so the caller falls back to the blocking `lookup` in a thread."""
        if not self._lock.acquire(blocking=False):
            return False, None
        try:
            if self._stamp is None:
                return False, None
            try:
                st = os.stat(self.path)
            except OSError:
                return False, None  # the blocking path reports it
            if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
                return False, None
            return True, self._users.get(user)
        finally:
            self._lock.release()

    def users(self) -> list[str]:
        """All user names, in file order (for listings and tests)."""
        with self._lock:
            self._refresh()
            return list(self._users)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            raise PasswdFileError(f"passwd-file {self.path} does not exist") from None
        except OSError as exc:
            raise PasswdFileError(f"passwd-file {self.path}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise PasswdFileError(f"passwd-file {self.path}: {exc.strerror}") from None
        self._users = self._parse(raw)
        self._stamp = stamp
        log.info("passwd-file %s loaded: %d users", self.path, len(self._users))

    def _parse(self, raw: bytes) -> dict[str, PasswdEntry]:
        users: dict[str, PasswdEntry] = {}
        for lineno, raw_line in enumerate(raw.split(b"\n"), start=1):
            try:
                entry = parse_line(raw_line.decode("utf-8"))
            except UnicodeDecodeError:
                log.warning("passwd-file %s line %d ignored: not valid UTF-8", self.path, lineno)
                continue
            except ValueError as exc:
                log.warning("passwd-file %s line %d ignored: %s", self.path, lineno, exc)
                continue
            if entry is None:
                continue
            if entry.user in users:
                log.warning("passwd-file %s line %d ignored: user %s already defined",
                            self.path, lineno, entry.user)
                continue
            users[entry.user] = entry
        return users


@dataclass(frozen=True)
class PasswdFileArgs:
    """``args = [scheme=X] [username_format=FMT] PATH`` (PATH may use ``%d``, ``%n``...)."""

    path: Template
    scheme: str = DEFAULT_SCHEME
    username_format: Template = field(default_factory=lambda: Template.parse("%u"))

    @classmethod
    def parse(cls, args: str) -> PasswdFileArgs:
        scheme = DEFAULT_SCHEME
        username_format = "%u"
        rest = args.strip()
        while rest:
            token, _, tail = rest.partition(" ")
            if token.startswith("scheme="):
                scheme = token[len("scheme="):]
                if not is_known_scheme(scheme):
                    raise PasswdArgsError(f"passwd-file: unknown password scheme {scheme!r}")
            elif token.startswith("username_format="):
                username_format = token[len("username_format="):]
            else:
                break
            rest = tail.strip()
        if not rest:
            raise PasswdArgsError("passwd-file: args must name the file")
        try:
            return cls(Template.parse(rest), scheme.upper(), Template.parse(username_format))
        except VariableError as exc:
            raise PasswdArgsError(f"passwd-file: {exc}") from None


class PasswdFileDriver:
    """The passwd-file passdb driver; one PasswdFile per expanded path."""

    def __init__(self, args: str) -> None:
        self.args = PasswdFileArgs.parse(args)
        self.default_scheme = self.args.scheme
        self._files: dict[str, PasswdFile] = {}
        self._lock = threading.Lock()

    def file_for(self, values: Mapping[str, str]) -> PasswdFile | None:
        """The file for this request, or None when a variable would escape the directory."""
        template = self.args.path
        for name in template.names:
            value = values.get(name, "")
            if "/" in value or "\0" in value or value in (".", ".."):
                return None
        path = template.render(values)
        with self._lock:
            pf = self._files.get(path)
            if pf is None:
                pf = self._files[path] = PasswdFile(path)
            return pf

    def lookup_nowait(self, user: str, values: Mapping[str, str]) -> DriverLookup | None:
        """The lookup when it needs no file read (the usual case); None: call `lookup` in a thread."""
        pf = self.file_for(values)
        if pf is None:
            return DriverLookup(found=False)
        current, entry = pf.lookup_nowait(self.args.username_format.render(values))
        if not current:
            return None
        if entry is None:
            return DriverLookup(found=False)
        return DriverLookup(found=True, password=entry.password, fields=entry.extra_fields)

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        pf = self.file_for(values)
        if pf is None:
            return DriverLookup(found=False)
        key = self.args.username_format.render(values)
        try:
            entry = pf.lookup(key)
        except PasswdFileError as exc:
            if not self.args.path.is_literal and not os.path.exists(pf.path):
                # A per-domain file that does not exist: that domain simply has no users.
                return DriverLookup(found=False)
            return DriverLookup(found=False, error=str(exc))
        if entry is None:
            return DriverLookup(found=False)
        return DriverLookup(found=True, password=entry.password, fields=entry.extra_fields)
