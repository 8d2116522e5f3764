"""A parser for Dovecot's configuration syntax, producing a tree of located nodes.

It knows the syntax only (assignments, sections, includes, group includes); what
the names mean is the loader's business. Every node keeps its file and line so that
later checks can point at the exact place a value came from.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from palomar.config.errors import ConfigError, Location

_KEY = re.compile(r"[^\s={}\"'#]+")
_GROUP = re.compile(r"@([A-Za-z0-9_-]+)\s*=\s*(.*)\Z", re.S)
_INCLUDE = re.compile(r"!(include|include_try)(?:\s+(.*))?\Z", re.S)
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class Assignment:
    """`key = value`; `value` is already unquoted (or read from a `<file`)."""

    key: str
    value: str
    location: Location


@dataclass
class GroupInclude:
    """`@group = value`, e.g. `@cluster_defaults = proxy`."""

    name: str
    value: str
    location: Location


@dataclass
class Section:
    """`kind [label] { ... }`; the root of a file is a section with an empty kind."""

    kind: str
    label: str | None
    location: Location
    children: list[Node] = field(default_factory=list)

    @property
    def title(self) -> str:
        """How the operator wrote the section header, for messages."""
        return f"{self.kind} {self.label}" if self.label is not None else self.kind


Node = Assignment | GroupInclude | Section


@dataclass
class ParsedConfig:
    """The whole tree after includes, and every file that was read (in order)."""

    root: Section
    files: list[str]


def parse_file(path: str | Path) -> ParsedConfig:
    """Parse `path` and everything it includes; raises `ConfigError` at the first syntax error."""
    path = Path(path)
    root = Section("", None, Location(str(path), 0))
    parser = _Parser()
    parser.read_file(path, root, None)
    return ParsedConfig(root, parser.files)


def _read_text(path: Path) -> str:
    """A file's text as written: no newline translation (a lone CR is not a line end)."""
    return path.read_bytes().decode("utf-8")


def _unquote(text: str, location: Location) -> tuple[str, str]:
    """Split a leading quoted string off `text`: (its unescaped content, the rest)."""
    quote = text[0]
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == quote:
            return "".join(out), text[i + 1 :]
        out.append(ch)
        i += 1
    raise ConfigError("syntax error: unterminated quoted string", location)


def _strip_comment(text: str, location: Location) -> str:
    """Drop a `#` comment (outside quotes) and the whitespace around what remains."""
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return text[:i].strip()
        i += 1
    if quote:
        raise ConfigError("syntax error: unterminated quoted string", location)
    return text.strip()


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, text) with `\\`-continued lines joined, blanks and comments skipped."""
    pending = ""
    start = 0
    # Lines end at LF only (CRLF too), as Dovecot reads them: str.splitlines() would also
    # break at CR, FF, NEL, U+2028 and the like, tearing values apart and misnumbering lines.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


class _Parser:
    def __init__(self) -> None:
        self.files: list[str] = []
        self._active: list[Path] = []

    def read_file(self, path: Path, into: Section, included_at: Location | None) -> None:
        resolved = path.resolve()
        if resolved in self._active:
            raise ConfigError(f"!include {path}: include loop", included_at)
        try:
            text = _read_text(path)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text", included_at) from None
        except OSError as exc:
            what = f"!include {path}" if included_at else str(path)
            raise ConfigError(f"{what}: {exc.strerror or exc}", included_at) from None
        self.files.append(str(path))
        self._active.append(resolved)
        stack = [into]
        for number, line in _logical_lines(text):
            self._line(line, Location(str(path), number), stack, path.parent)
        if len(stack) > 1:
            open_section = stack[-1]
            raise ConfigError(
                f"syntax error: section '{open_section.title}' is not closed with '}}'", open_section.location
            )
        self._active.pop()

    def _line(self, line: str, loc: Location, stack: list[Section], directory: Path) -> None:
        current = stack[-1]
        if line.startswith("!"):
            self._include(_strip_comment(line, loc), loc, current, directory)
            return
        if line.startswith("@"):
            match = _GROUP.match(_strip_comment(line, loc))
            if not match:
                raise ConfigError("syntax error: expected '@group = value'", loc)
            value = match.group(2)
            if value[:1] in ("'", '"'):
                value, _ = _unquote(value, loc)
            current.children.append(GroupInclude(match.group(1), value, loc))
            return
        if line.startswith("}"):
            if _strip_comment(line[1:], loc):
                raise ConfigError("syntax error: unexpected text after '}'", loc)
            if len(stack) == 1:
                raise ConfigError("syntax error: '}' without an open section", loc)
            stack.pop()
            return
        key_match = _KEY.match(line)
        if not key_match:
            raise ConfigError("syntax error: expected 'key = value', 'name {' or '}'", loc)
        key = key_match.group(0)
        rest = line[key_match.end() :].lstrip()
        if rest.startswith("="):
            current.children.append(Assignment(key, self._value(key, rest[1:].lstrip(), loc, directory), loc))
            return
        self._section_header(key, rest, loc, stack)

    def _value(self, key: str, text: str, loc: Location, directory: Path) -> str:
        if text[:1] in ("'", '"'):
            value, rest = _unquote(text, loc)
            if _strip_comment(rest, loc):
                raise ConfigError(f"syntax error: unexpected text after the quoted value of {key}", loc)
            return value
        value = _strip_comment(text, loc)
        if value.startswith("<"):
            name = value[1:].strip()
            if not name:
                raise ConfigError(f"{key}: '<' must be followed by a file name", loc)
            source = directory / name
            try:
                return _read_text(source).rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not readable UTF-8 text"
                raise ConfigError(f"{key}: cannot read <{source}: {reason}", loc) from None
        return value

    def _section_header(self, kind: str, rest: str, loc: Location, stack: list[Section]) -> None:
        label: str | None = None
        if rest[:1] in ("'", '"'):
            label, rest = _unquote(rest, loc)
            rest = rest.lstrip()
        elif rest and not rest.startswith("{"):
            label_match = _KEY.match(rest)
            if not label_match:
                raise ConfigError("syntax error: expected 'key = value', 'name {' or '}'", loc)
            label = label_match.group(0)
            rest = rest[label_match.end() :].lstrip()
        if not rest.startswith("{"):
            raise ConfigError(f"syntax error: expected '=' or '{{' after '{kind}'", loc)
        rest = _strip_comment(rest[1:], loc)
        section = Section(kind, label, loc)
        stack[-1].children.append(section)
        if rest == "}":
            return
        if rest:
            raise ConfigError(f"syntax error: unexpected text after '{section.title} {{'", loc)
        stack.append(section)

    def _include(self, line: str, loc: Location, current: Section, directory: Path) -> None:
        match = _INCLUDE.match(line)
        if not match:
            raise ConfigError(f"syntax error: unknown directive '{line.split()[0]}'", loc)
        optional = match.group(1) == "include_try"
        name = (match.group(2) or "").strip()
        if name[:1] in ("'", '"'):
            name, _ = _unquote(name, loc)
        if not name:
            raise ConfigError(f"syntax error: !{match.group(1)} needs a file name", loc)
        target = directory / name
        if _GLOB_CHARS.search(name):
            matches = sorted(glob.glob(str(target)))
            if not matches and not optional:
                raise ConfigError(f"!include {target}: no files match", loc)
            for found in matches:
                self.read_file(Path(found), current, loc)
            return
        if optional and not target.exists():
            return
        self.read_file(target, current, loc)
