"""Subaddresses (`user+detail@domain`) as Dovecot 2.3's LMTP splits and rebuilds them.

`recipient_delimiter` lists delimiter characters; the first character of the local part that
is any of them splits it (Dovecot's `smtp_address_detail_parse`). The user part is looked up
and routed; the whole address, detail included, goes on to the backend's Dovecot so Sieve's
`subaddress` and `lmtp_save_to_detail_mailbox` still see the detail. When the passdb renames the
user, the address is rebuilt from the new name with the same delimiter and detail, as Dovecot's
LMTP proxy does.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DELIMITERS = "+"


def delimiters_problem(delimiters: str) -> str | None:
    """Why `delimiters` cannot be a recipient_delimiter, or None: a space, a control character, `@`,
    a quote or a backslash would split addresses where no MTA meant to."""
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c in '@"\\' for c in delimiters):
        return "recipient_delimiter: use printable characters other than @, \" and \\"
    return None


@dataclass(frozen=True)
class Recipient:
    """A recipient address split at its first delimiter character."""

    username: str
    """The address without the detail: what the passdb looks up and routing uses."""
    delimiter: str = ""
    detail: str = ""


def split_detail(address: str, delimiters: str = DEFAULT_DELIMITERS) -> Recipient:
    """Split `address` at the first character of its local part found in `delimiters`."""
    localpart, at, domain = address.rpartition("@")
    if not at:
        localpart, domain = address, ""
    index = next((i for i, ch in enumerate(localpart) if ch in delimiters), -1) if delimiters else -1
    if index < 0:
        return Recipient(address)
    user = localpart[:index]
    return Recipient(f"{user}@{domain}" if at else user, localpart[index], localpart[index + 1:])


def with_detail(username: str, recipient: Recipient) -> str:
    """`username` with the recipient's delimiter and detail put back into its local part."""
    if not recipient.delimiter:
        return username
    localpart, at, domain = username.rpartition("@")
    if not at:
        return f"{username}{recipient.delimiter}{recipient.detail}"
    return f"{localpart}{recipient.delimiter}{recipient.detail}@{domain}"


def delivery_address(original: str, recipient: Recipient, username: str) -> str:
    """The address to hand to the backend: the client's own unless the passdb renamed the user."""
    return original if username == recipient.username else with_detail(username, recipient)
