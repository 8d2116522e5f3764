"""Structured hostile input for the login protocols: real command names with arguments
built from the pieces that break parsers, so the fuzzer gets past the first line into
literals, SASL exchanges, STARTTLS and pipelining."""

from __future__ import annotations

from hypothesis import strategies as st

from unit.fuzz.hostile import LINE_ENDS, LITERAL_SIZES, nasty, sasl_response, word

# --------------------------------------------------------------------------- IMAP

IMAP_TAGS = st.one_of(st.sampled_from([b"a1", b"A", b"*", b"+", b"", b"LOGIN", b"a\x00", b"t" * 101, b"\xff"]), word())
IMAP_COMMANDS = st.sampled_from([b"LOGIN", b"login", b"AUTHENTICATE", b"ID", b"STARTTLS", b"CAPABILITY", b"NOOP",
                            b"LOGOUT", b"ENABLE", b"SELECT", b"", b"LOG\x00IN"])
IMAP_MECHS = st.sampled_from([b"PLAIN", b"plain", b"LOGIN", b"CRAM-MD5", b"", b'"PLAIN"'])


@st.composite
def imap_string(draw: st.DrawFn) -> bytes:
    """An astring as a client might send it, well formed or not."""
    kind = draw(st.sampled_from(["atom", "quoted", "literal", "raw"]))
    if kind == "atom":
        return draw(word()) or b"x"
    if kind == "quoted":
        body = draw(nasty(8))
        if draw(st.booleans()):
            body = body.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + body + (b'"' if draw(st.booleans()) else b"")
    if kind == "literal":
        size = draw(LITERAL_SIZES)
        plus = draw(st.sampled_from([b"", b"+"]))
        payload = draw(nasty(10))
        if draw(st.sampled_from([True, True, False])) and size.isdigit() and int(size) <= 40:
            payload = (payload * 40)[: int(size)]  # the announced size, exactly
        return b"{" + size + plus + b"}" + draw(LINE_ENDS) + payload
    return draw(nasty(6))


@st.composite
def imap_command(draw: st.DrawFn) -> bytes:
    tag = draw(IMAP_TAGS)
    name = draw(IMAP_COMMANDS)
    if name.upper() == b"AUTHENTICATE":
        args = [draw(IMAP_MECHS)]
        if draw(st.booleans()):
            args.append(draw(sasl_response()))
    elif name.upper() == b"ID":
        args = [draw(st.one_of(
            st.just(b"NIL"),
            st.lists(imap_string(), max_size=6).map(lambda items: b"(" + b" ".join(items) + b")"),
            nasty(6),
        ))]
    else:
        args = draw(st.lists(imap_string(), max_size=3))
    line = b" ".join([tag, name, *args])
    line += draw(LINE_ENDS)
    if name.upper() == b"AUTHENTICATE" and draw(st.booleans()):
        line += b"".join(r + b"\r\n" for r in draw(st.lists(sasl_response(), max_size=3)))
    return line


def imap_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(imap_command(), imap_command(), nasty(10)), max_size=max_commands).map(b"".join)


# --------------------------------------------------------------------------- POP3

POP3_VERBS = st.sampled_from([b"USER", b"user", b"PASS", b"AUTH", b"CAPA", b"STLS", b"QUIT", b"APOP", b"STAT", b"",
                         b"US\x00ER", b"\xffUSER"])


@st.composite
def pop3_command(draw: st.DrawFn) -> bytes:
    verb = draw(POP3_VERBS)
    if verb.upper() == b"AUTH":
        args = draw(st.sampled_from([b"", b"PLAIN", b"LOGIN", b"plain", b"CRAM-MD5", b"PLAIN PLAIN", b"\xff"]))
        if args and draw(st.booleans()):
            args += b" " + draw(sasl_response())
    else:
        args = draw(st.one_of(word(), nasty(8)))
    line = verb + (b" " + args if args or draw(st.booleans()) else b"") + draw(LINE_ENDS)
    if verb.upper() == b"AUTH" and draw(st.booleans()):
        line += b"".join(r + b"\r\n" for r in draw(st.lists(sasl_response(), max_size=3)))
    return line


def pop3_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(pop3_command(), pop3_command(), nasty(10)), max_size=max_commands).map(b"".join)


# --------------------------------------------------------------------------- ManageSieve

SIEVE_VERBS = st.sampled_from([b"AUTHENTICATE", b"authenticate", b"NOOP", b"CAPABILITY", b"LOGOUT", b"STARTTLS",
                         b"HAVESPACE", b"", b'"NOOP"'])


@st.composite
def sieve_string(draw: st.DrawFn, inner=None) -> bytes:
    body = draw(inner if inner is not None else nasty(8))
    kind = draw(st.sampled_from(["quoted", "literal", "raw"]))
    if kind == "quoted":
        if draw(st.booleans()):
            body = body.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + body + b'"'
    if kind == "literal":
        exact = draw(st.sampled_from([True, True, True, False]))
        size = str(len(body)).encode() if exact else draw(LITERAL_SIZES)
        return b"{" + size + draw(st.sampled_from([b"+", b""])) + b"}\r\n" + body
    return body


@st.composite
def sieve_command(draw: st.DrawFn) -> bytes:
    verb = draw(SIEVE_VERBS)
    if verb.upper() == b"AUTHENTICATE":
        mech = st.sampled_from([b"PLAIN", b"LOGIN", b"plain", b"", b"GSSAPI"])
        args = [draw(sieve_string(mech))]
        if draw(st.booleans()):
            args.append(draw(sieve_string(sasl_response())))
    else:
        args = draw(st.lists(sieve_string(), max_size=1 if verb.upper() == b"NOOP" else 2))
    line = b" ".join([verb, *args]) + draw(LINE_ENDS)
    if verb.upper() == b"AUTHENTICATE" and draw(st.booleans()):
        line += b"".join(draw(sieve_string(sasl_response())) + b"\r\n"
                         for _ in range(draw(st.integers(min_value=0, max_value=3))))
    return line


def sieve_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(sieve_command(), sieve_command(), nasty(10)), max_size=max_commands).map(b"".join)


# --------------------------------------------------------------------------- Submission (SMTP)

SMTP_VERBS = st.sampled_from([b"EHLO", b"HELO", b"ehlo", b"AUTH", b"STARTTLS", b"RSET", b"NOOP", b"QUIT", b"MAIL",
                         b"RCPT", b"BDAT", b"DATA", b"XCLIENT", b"", b"EH\x00LO", b"1EHLO"])


@st.composite
def smtp_command(draw: st.DrawFn) -> bytes:
    verb = draw(SMTP_VERBS)
    upper = verb.upper()
    if upper == b"AUTH":
        args = draw(st.sampled_from([b"", b"PLAIN", b"LOGIN", b"plain", b"CRAM-MD5", b"PLAIN a b", b"\xff"]))
        if args and draw(st.booleans()):
            args += b" " + draw(sasl_response())
    elif upper == b"BDAT":
        args = draw(st.sampled_from([b"0", b"5", b"3 LAST", b"-1", b"99999999999999999999", b"x", b""]))
    else:
        args = draw(st.one_of(word(), nasty(8)))
    line = verb + (b" " + args if args or draw(st.booleans()) else b"") + draw(LINE_ENDS)
    if upper == b"AUTH" and draw(st.booleans()):
        line += b"".join(r + b"\r\n" for r in draw(st.lists(sasl_response(), max_size=3)))
    if upper == b"BDAT":
        line += draw(nasty(6))
    return line


def smtp_session(max_commands: int = 8) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(smtp_command(), smtp_command(), nasty(10)), max_size=max_commands).map(b"".join)
