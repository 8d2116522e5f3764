"""Dovecot's passwd-file passdb: ``user:password:uid:gid:gecos:home:shell:extra_fields``.

The file is indexed again whenever its mtime, size or inode changes, so operators can edit
it (or, best, replace it atomically with ``rename``) without restarting anything; logins go on
being answered from the old index until the new one is built. The index holds offsets, not
entries: a line is parsed when its user logs in. A bad line is skipped with a warning naming
the file and line number, never its content (it may hold a hash), so one typo cannot lock
every user out: a bad user name or a duplicate when the file is indexed, a bad rest of the
line when that user is looked up.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import add
from typing import BinaryIO

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


class _Stale:
    """A line moved under the index (the file was rewritten in place): wait for the new build."""


STALE = _Stale()
Stamp = tuple[int, int, int]


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _line_user(line: bytes) -> bytes:
    colon = line.find(b":")
    return line.rstrip(b"\r\n") if colon < 0 else line[:colon]


def _name_problem(name: bytes, line: bytes) -> str | None:
    """Why a line cannot be indexed (``parse_line``'s user-name rules), or None."""
    if b"\0" in line:
        return "line contains NUL"
    if name.isascii():
        if not name or _ASCII_BAD_NAME.search(name):
            return "empty or invalid user name"
        return None
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if any(c.isspace() or ord(c) < 32 for c in text):
        return "empty or invalid user name"
    return None


_ASCII_BAD_NAME = re.compile(rb"[\x00-\x20]")
_BULK_BAD = re.compile(rb"[\x00-\x20#]")  # a comment, a blank or an odd line: go line by line
_SCAN_BLOCK = 1 << 18
_YIELD_EVERY = 1024
"""Table inserts between two voluntary GIL releases while an index is built."""
_READ_SIZE = 1024
_EMPTY = -1


class PasswdIndex:
    """One build of the file: an open-addressing table from user-name hash to the byte offset
    and line number of the user's line, which a lookup reads back with ``pread``.

    About 28 bytes per user (1M users: ~28 MB) instead of Python objects for every line; the
    lines stay in the page cache, shared by all proxy processes, and only a looked-up line is
    parsed. The index keeps its own descriptor, so a file replaced by ``rename`` is still read
    consistently until the next build is ready. A line that no longer holds the user it was
    indexed for (the file was rewritten in place) answers STALE: the caller waits for the new build.
    """

    def __init__(self, path: str, fh: BinaryIO, stamp: Stamp) -> None:
        self.path = path
        self.stamp = stamp
        self._fh = fh
        self._hashes = array("q")
        self._offsets = array("Q")
        self._linenos = array("I")  # 0: a duplicate, left out of the table
        self._slots = array("i", [_EMPTY])
        self._mask = 0
        self.size = 0

    def find(self, user: str) -> PasswdEntry | None | _Stale:
        """The entry for ``user``; None when unknown or its line is malformed (logged), or STALE."""
        name = user.encode("utf-8", "surrogateescape")
        key = hash(name)
        slot = key & self._mask
        while (i := self._slots[slot]) != _EMPTY:
            if self._hashes[i] == key:
                line = self._read_line(self._offsets[i])
                found = None if line is None else _line_user(line)
                if line is None or hash(found) != key:
                    return STALE
                if found == name:
                    return self._parse(line, self._linenos[i])
            slot = (slot + 1) & self._mask
        return None

    def users(self) -> list[str]:
        """All user names in file order."""
        names = (self._user_at(off) for off, lineno in zip(self._offsets, self._linenos, strict=True) if lineno)
        return [name.decode("utf-8") for name in names if name is not None]

    def _parse(self, line: bytes, lineno: int) -> PasswdEntry | None:
        try:
            return parse_line(line.decode("utf-8"))
        except UnicodeDecodeError:
            reason = "not valid UTF-8"
        except ValueError as exc:
            reason = str(exc)
        log.warning("passwd-file %s line %d ignored: %s", self.path, lineno, reason)
        return None

    def _read_line(self, offset: int) -> bytes | None:
        """The line starting at ``offset``; None when no line starts there any more."""
        fd = self._fh.fileno()
        start = max(offset - 1, 0)  # the byte before must end the previous line
        chunk = os.pread(fd, _READ_SIZE, start)
        while b"\n" not in chunk[1:] and len(chunk) % _READ_SIZE == 0 and chunk:
            more = os.pread(fd, _READ_SIZE, start + len(chunk))
            if not more:
                break
            chunk += more
        if offset:
            if chunk[:1] != b"\n":
                return None
            chunk = chunk[1:]
        return chunk.split(b"\n", 1)[0]

    def _user_at(self, offset: int) -> bytes | None:
        line = self._read_line(offset)
        return None if line is None else _line_user(line)

    def _scan(self) -> None:
        """Record every line with a valid user name; other lines are logged and skipped."""
        offset, lineno, tail = 0, 1, b""
        while block := self._fh.read(_SCAN_BLOCK):
            block = tail + block
            cut = block.rfind(b"\n") + 1
            tail = block[cut:]
            if cut:
                lines = block[:cut].split(b"\n")
                lines.pop()
                self._scan_lines(lines, offset, lineno)
                time.sleep(0)  # hand the GIL over: see _insert_all
                offset, lineno = offset + cut, lineno + len(lines)
        if tail:
            self._scan_lines([tail], offset, lineno)

    def _scan_lines(self, lines: list[bytes], offset: int, lineno: int) -> None:
        """One block of whole lines: in bulk when every name is plain ASCII, else line by line.

        The bulk path is a few C calls over ~10k lines, so the GIL is held only briefly."""
        names = [line.partition(b":")[0] for line in lines]
        joined = b":".join(names)
        if all(names) and joined.isascii() and not _BULK_BAD.search(joined) and not any(b"\0" in x for x in lines):
            self._hashes.extend(map(hash, names))
            self._offsets.extend(accumulate(map(add, map(len, lines[:-1]), repeat(1)), initial=offset))
            self._linenos.extend(range(lineno, lineno + len(lines)))
            return
        for line, name in zip(lines, names, strict=True):
            start, offset, lineno = offset, offset + len(line) + 1, lineno + 1
            stripped = line.strip()
            if not stripped or stripped.startswith(b"#"):
                continue
            problem = _name_problem(_line_user(name), line)
            if problem:
                log.warning("passwd-file %s line %d ignored: %s", self.path, lineno - 1, problem)
                continue
            self._hashes.append(hash(_line_user(name)))
            self._offsets.append(start)
            self._linenos.append(lineno - 1)

    def _insert_all(self) -> None:
        """Fill the table at load factor <= 1/2; of two lines for one user the first wins.

        Plain Python loops (no single long C call such as a sort), and the GIL is given up
        every `_YIELD_EVERY` inserts: otherwise the event loop thread, which releases the GIL at
        each socket call, would wait up to the 5 ms switch interval to get it back every time,
        and a login during a reload would pay that dozens of times.
        """
        capacity = 8
        while capacity < 2 * len(self._hashes):
            capacity *= 2
        self._mask = capacity - 1
        self._slots = array("i", [_EMPTY]) * capacity
        hashes, slots, mask = self._hashes, self._slots, self._mask
        for i, key in enumerate(hashes):
            if i % _YIELD_EVERY == 0:
                time.sleep(0)
            slot = key & mask
            while (j := slots[slot]) != _EMPTY:
                if hashes[j] == key and self._same_user(i, j):
                    log.warning("passwd-file %s line %d ignored: user %s already defined",
                                self.path, self._linenos[i], (self._user_at(self._offsets[i]) or b"").decode())
                    self._linenos[i] = 0
                    break
                slot = (slot + 1) & mask
            else:
                slots[slot] = i
                self.size += 1

    def _same_user(self, i: int, j: int) -> bool:
        return self._user_at(self._offsets[i]) == self._user_at(self._offsets[j])


def build_index(path: str) -> PasswdIndex:
    """Read the file once and index it (about a second per million lines: call it off the loop)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the index owns the descriptor for its lifetime
    except FileNotFoundError:
        raise PasswdFileError(f"passwd-file {path} does not exist") from None
    except OSError as exc:
        raise PasswdFileError(f"passwd-file {path}: {exc.strerror}") from None
    try:
        index = PasswdIndex(path, fh, _stamp(os.fstat(fh.fileno())))
        index._scan()
        index._insert_all()
    except OSError as exc:
        fh.close()
        raise PasswdFileError(f"passwd-file {path}: {exc.strerror}") from None
    log.info("passwd-file %s loaded: %d users", path, index.size)
    return index


class PasswdFile:
    """A passwd-file indexed in memory, rebuilt when the file on disk changes.

    Lookups on the event loop (`lookup_nowait`) keep using the old index while a worker thread
    builds the new one, so editing a large file never stops logins.
    """

    def __init__(self, path: str, *, build: Callable[[str], PasswdIndex] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._build = build
        self._clock = clock
        self._synced_at: int | None = None
        """The whole second of `lookup_nowait`'s last stat of the file."""
        self._index: PasswdIndex | None = None
        self._build_lock = threading.Lock()
        self._reloader: threading.Thread | None = None
        self._reloader_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PasswdFile({self.path!r}, users={self._index.size if self._index else 0})"

    def lookup(self, user: str) -> PasswdEntry | None:
        """The entry for ``user`` in the file as it is now (may build the index). Raises PasswdFileError."""
        found = self._current().find(user)
        if isinstance(found, _Stale):
            found = self._current(rebuild=True).find(user)
        return None if isinstance(found, _Stale) else found

    def lookup_nowait(self, user: str) -> tuple[bool, PasswdEntry | None]:
        """(True, entry) without blocking: a table probe, from the old index while a changed file
        is being indexed in the background. (False, None) when there is no usable index (not built
        yet, the file is gone, or was rewritten in place): the caller then falls back to the
        blocking `lookup` in a thread. The file is stat()ed for changes at most once a second, as
        Dovecot's passwd-file does (`passwd_file_sync` in db-passwd-file.c)."""
        index = self._index
        if index is None:
            return False, None
        now = int(self._clock())
        if now != self._synced_at:
            try:
                st = os.stat(self.path)
            except OSError:
                return False, None  # the blocking path reports it
            self._synced_at = now
            if _stamp(st) != index.stamp:
                self._start_reload()
        found = index.find(user)
        if isinstance(found, _Stale):
            return False, None
        return True, found

    def users(self) -> list[str]:
        """All user names, in file order (for listings and tests)."""
        return self._current().users()

    def warm(self) -> None:
        """Build the index now (at start-up) so the first login does not wait for it."""
        self._current()

    def _current(self, *, rebuild: bool = False) -> PasswdIndex:
        with self._build_lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                raise PasswdFileError(f"passwd-file {self.path} does not exist") from None
            except OSError as exc:
                raise PasswdFileError(f"passwd-file {self.path}: {exc.strerror}") from None
            index = self._index
            if index is None or rebuild or index.stamp != _stamp(st):
                index = self._index = (self._build or build_index)(self.path)
            return index

    def _start_reload(self) -> None:
        with self._reloader_lock:
            if self._reloader is not None and self._reloader.is_alive():
                return
            self._reloader = threading.Thread(target=self._reload, name="passwd-file-reload", daemon=True)
            self._reloader.start()

    def _reload(self) -> None:
        try:
            self._current()
        except PasswdFileError as exc:
            log.error("%s", exc)


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

    def warm(self) -> None:
        """Index a fixed-path file at start-up (a per-domain file is indexed on its first use)."""
        if not self.args.path.is_literal:
            return
        pf = self.file_for({})
        assert pf is not None
        try:
            pf.warm()
        except PasswdFileError as exc:
            log.error("%s", exc)

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
