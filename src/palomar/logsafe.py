"""Client text in log lines: one sanitiser, the habit of Dovecot's `str_sanitize()`.

A user name sent as an IMAP literal or inside SASL PLAIN may hold CR, LF or NUL; written raw,
it would let an unauthenticated client forge whole log lines (`... user=admin
result=Established`). Every log call that carries client-supplied text wraps it in `safe()`;
the formatter installed by `service_runtime.setup_logging` is the second line of defence for
a call site that forgets.
"""

from __future__ import annotations

import logging
import re

MAX_LENGTH = 160
"""Dovecot's limit for client text in log lines (`str_sanitize(line, 160)` in its login proxies)."""

ELLIPSIS = "..."

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""Control characters (C0, DEL, C1), the Unicode line and paragraph separators (some log
readers break lines there) and lone surrogates (undecodable bytes, which would make the log
file's encoder raise)."""

_UNSAFE_IN_TRACEBACK = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""As `_UNSAFE`, but a traceback keeps its line feeds: it is one multi-line block."""


def safe(value: object, max_length: int = MAX_LENGTH) -> str:
    """`value` as text fit for one log line: each unsafe character becomes '?', and text longer
    than `max_length` characters is cut to `max_length` with "..." at its end.

    Like `str_sanitize()`, but counting characters, not UTF-8 bytes.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) > max_length:
        text = text[:max(max_length - len(ELLIPSIS), 0)] + ELLIPSIS
    return _UNSAFE.sub("?", text)


def one_line(text: str) -> str:
    """`text` with every unsafe character replaced, never truncated (whole formatted messages)."""
    return _UNSAFE.sub("?", text)


class OneLineFormatter(logging.Formatter):
    """A formatter whose message part can never span lines or hold a NUL, whatever the call
    site passed; tracebacks (formatted apart from the message) keep their line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return _UNSAFE_IN_TRACEBACK.sub("?", super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _UNSAFE_IN_TRACEBACK.sub("?", super().formatStack(stack_info))
