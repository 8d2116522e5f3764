"""Strategies for hostile wire input shared by the fuzz tests, and the chunking helpers.

Random bytes alone rarely get past a parser's first line, so most strategies build
*structured* input: real command names with arguments made of the pieces that break
parsers (CR, LF, NUL, quotes, backslashes, 8-bit bytes, literal markers with absurd
sizes, over-long runs).
"""

from __future__ import annotations

import base64

from hypothesis import settings
from hypothesis import strategies as st

#: Bytes that mean something to some grammar here.
SPECIAL = [b"a", b"A", b"0", b"9", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\0", b'"', b"\\", b"'", b"{", b"}",
           b"(", b")", b"[", b"]", b"<", b">", b"@", b":", b",", b";", b"=", b"+", b"-", b".", b"*", b"%",
           b"#", b"!", b"/", b"\x7f", b"\x80", b"\xff", b"\xc3\xa9", b"\xe2\x80\xa8", b"\xed\xa0\x80",
           b"NIL", b"{5}", b"{0+}", b"\r\n.\r\n", b"\n.\n", b"\r\n..", b"=", b"PLAIN", b"LOGIN"]

#: Mostly CRLF, so that commands get past framing, but every odd ending too.
LINE_ENDS = st.one_of(st.just(b"\r\n"), st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b" \r\n", b"\n\r"]))

#: Literal sizes: ordinary, zero, negative, leading zeros, past 32 bits, too many digits, empty.
LITERAL_SIZES = st.one_of(
    st.integers(min_value=0, max_value=40).map(lambda n: str(n).encode()),
    st.sampled_from([b"-1", b"", b"007", b"4294967295", b"4294967296", b"9999999999", b"99999999999",
                     b"18446744073709551616", b"1e3", b" 5", b"+5", b"0x10", b"\xd9\xa3"]),
)


def nasty(max_size: int = 12) -> st.SearchStrategy[bytes]:
    """Short byte strings made of grammar-significant pieces and random bytes."""
    piece = st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=3))
    return st.lists(piece, max_size=max_size).map(b"".join)


def word() -> st.SearchStrategy[bytes]:
    """A plausible token: letters and digits, sometimes empty."""
    return st.text("abcxyzABC019-._@", max_size=10).map(str.encode)


def b64_of(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return inner.map(base64.b64encode)


def plain_message() -> st.SearchStrategy[bytes]:
    """SASL PLAIN messages: well formed, with too few or too many NULs, empty fields."""
    field = st.one_of(word(), nasty(4))
    return st.lists(field, min_size=0, max_size=5).map(b"\0".join)


def sasl_response() -> st.SearchStrategy[bytes]:
    """A SASL answer line: base64 of a PLAIN message, `*`, `=`, or broken base64."""
    return st.one_of(
        b64_of(plain_message()),
        b64_of(st.binary(max_size=20)),
        st.sampled_from([b"*", b"=", b"", b"====", b"YQ", b"YQ=", b"YWJj\r", b"A===", b"*x"]),
        nasty(6),
    )


def overlong(limit: int) -> st.SearchStrategy[bytes]:
    """A run of bytes around and past `limit`, to cross a core's line or buffer cap."""
    return st.integers(min_value=max(0, limit - 3), max_value=limit * 3 + 8).flatmap(
        lambda n: st.sampled_from([b"x", b"a b ", b"{", b"\r", b"\0"]).map(lambda unit: (unit * n)[:n])
    )


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` split at random places (possibly inside a CRLF or a multi-byte sequence)."""
    if not data:
        return [b""]
    points = sorted(set(draw(st.lists(st.integers(min_value=1, max_value=len(data)), max_size=12))))
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = point
    chunks.append(data[start:])
    return [chunk for chunk in chunks if chunk] or [b""]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))] or [b""]


def well_formed_lines(output: bytes) -> bool:
    """Every line ends with CRLF and carries no other CR or LF (no reply can be forged)."""
    if not output:
        return True
    if not output.endswith(b"\r\n"):
        return False
    return all(b"\r" not in line and b"\n" not in line for line in output[:-2].split(b"\r\n"))


def more(factor: int) -> settings:
    """The loaded profile's example count times `factor`, for tests cheap enough to run longer."""
    return settings(max_examples=settings.default.max_examples * factor)
