"""Pre-login capability lists, pure: what a backend's Dovecot offers before login, merged over the
backends of a site, with the proxy's Dovecot settings applied.

The proxy answers IMAP CAPABILITY, Submission EHLO and the ManageSieve greeting itself, before it
knows the user's backend. What those lists advertise beyond the login phase belongs to the
backends, so it is learnt from them (docs/compatibility.md). The login-related entries stay the
proxy's own, decided per connection by each protocol core: IMAP STARTTLS, AUTH= and LOGINDISABLED;
SMTP AUTH, STARTTLS and XCLIENT; ManageSieve IMPLEMENTATION, SASL, STARTTLS, VERSION and XCLIENT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from palomar.protocols import imap, submission

DEFAULT_SIEVE_EXTENSIONS = (
    "fileinto reject envelope encoded-character vacation subaddress comparator-i;ascii-numeric relational regex "
    "imap4flags copy include variables body enotify environment mailbox date index ihave duplicate mime "
    "foreverypart extracttext"
)
"""Pigeonhole 2.3's default `managesieve_sieve_capability`."""

_IMAP_OWN_PREFIXES = ("AUTH=",)
_IMAP_OWN = frozenset({"STARTTLS", "LOGINDISABLED"})
_EHLO_OWN = frozenset({"AUTH", "STARTTLS", "XCLIENT", "XRCPTFORWARD"})
_LITERAL = frozenset({"LITERAL+", "LITERAL-"})
BACKEND_SMTP_CAPABILITIES = ("8BITMIME", "BINARYMIME", "CHUNKING", "DSN", "VRFY")
"""What `submission_backend_capabilities` may name: the keywords Dovecot's submission-login takes
from it (CHUNKING is implied by BINARYMIME and always offered)."""
_FROM_BACKEND_SETTING = frozenset({"8BITMIME", "BINARYMIME", "DSN", "VRFY"})


@dataclass(frozen=True)
class BackendCaps:
    """One backend's pre-login lists without the proxy's own entries (or a site's merge of them)."""

    imap: tuple[str, ...]
    """IMAP capabilities, e.g. IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+."""
    submission: tuple[str, ...]
    """EHLO keywords with their parameters, e.g. `8BITMIME`, `BURL imap`, `SIZE 10240000`."""
    sieve: str
    """ManageSieve `SIEVE`: the Sieve extensions, space-separated."""
    notify: str | None
    """ManageSieve `NOTIFY`: the enotify methods; None when the backend sends no NOTIFY line."""


FALLBACK = BackendCaps(imap.DEFAULT_CAPABILITIES, submission.DEFAULT_EHLO_CAPABILITIES, DEFAULT_SIEVE_EXTENSIONS,
                       "mailto")
"""Dovecot CE 2.3's defaults: used until the first backend of the site has answered."""


def _keyword(entry: str) -> str:
    return entry.split(" ", 1)[0].upper()


def from_backend(imap_caps: Iterable[str], ehlo: Iterable[str], sieve_lines: Mapping[str, str | None]) -> BackendCaps:
    """A backend's caps from what its Dovecot sent: the IMAP banner's CAPABILITY list, the EHLO
    keywords (the lines after the host name) and the ManageSieve greeting's capability lines (names
    upper-cased). The proxy's own entries are dropped; ValueError when a list is unusable."""
    imap_list = tuple(c for c in imap_caps
                      if c.upper() not in _IMAP_OWN and not c.upper().startswith(_IMAP_OWN_PREFIXES))
    if not any(c.upper() in ("IMAP4REV1", "IMAP4REV2") for c in imap_list):
        raise ValueError("the backend's IMAP capabilities lack IMAP4rev1")
    ehlo_list = tuple(" ".join(e.split()) for e in ehlo if e.strip() and _keyword(e) not in _EHLO_OWN)
    sieve = sieve_lines.get("SIEVE")
    if sieve is None:
        raise ValueError("the backend's ManageSieve greeting has no SIEVE line")
    for text in (*imap_list, *ehlo_list, sieve, sieve_lines.get("NOTIFY") or ""):
        if any(ord(ch) < 0x20 or ch in '"\\' for ch in text):
            raise ValueError("a backend capability holds a control character or a quote")
    return BackendCaps(imap_list, ehlo_list, " ".join(sieve.split()), _words_or_none(sieve_lines.get("NOTIFY")))


def _words_or_none(text: str | None) -> str | None:
    return None if text is None else " ".join(text.split())


def _common_words(texts: Sequence[str]) -> str:
    """The words every text has, in the first text's order."""
    rest = [set(t.split()) for t in texts[1:]]
    return " ".join(w for w in texts[0].split() if all(w in other for other in rest))


def _size(entries: Iterable[str]) -> int | None:
    """The limit of a `SIZE n` keyword (None: `SIZE` without a limit)."""
    for entry in entries:
        if _keyword(entry) == "SIZE":
            parts = entry.split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() and int(parts[1]) > 0 else None
    return None


def merge(site: Sequence[BackendCaps]) -> BackendCaps:
    """What every backend of a site offers: the intersection, in the first backend's order. A
    client may be routed to any of them, so nothing only some of them have is advertised. SIZE
    keeps the smallest limit any of them announced."""
    if not site:
        raise ValueError("no backend capabilities to merge")
    first = site[0]
    if len(site) == 1:
        return first
    imap_sets = [{c.upper() for c in caps.imap} for caps in site[1:]]
    imap_list = tuple(c for c in first.imap if all(c.upper() in s for s in imap_sets))
    ehlo_sets = [{" ".join(e.upper().split()) for e in caps.submission} for caps in site[1:]]
    limits = [limit for limit in (_size(caps.submission) for caps in site) if limit is not None]
    ehlo: list[str] = []
    for entry in first.submission:
        if _keyword(entry) == "SIZE":
            if all(any(_keyword(e) == "SIZE" for e in caps.submission) for caps in site[1:]):
                ehlo.append(f"SIZE {min(limits)}" if limits else "SIZE")
        elif all(" ".join(entry.upper().split()) in s for s in ehlo_sets):
            ehlo.append(entry)
    notifies = [caps.notify for caps in site]
    notify = None if any(n is None for n in notifies) else _common_words([n for n in notifies if n is not None])
    return BackendCaps(imap_list, tuple(ehlo), _common_words([caps.sieve for caps in site]), notify)


@dataclass(frozen=True)
class CapabilitySettings:
    """The proxy's Dovecot settings that change the pre-login lists (empty: take the backends')."""

    imap_capability: str = ""
    """Dovecot's `imap_capability`: a list replaces the backends' one, `+X Y` adds to it."""
    submission_backend_capabilities: tuple[str, ...] | None = None
    """Dovecot's `submission_backend_capabilities` (None: unset): which of 8BITMIME, BINARYMIME,
    DSN and VRFY the EHLO offers, instead of what the backends' EHLO says."""
    sieve_capability: str = ""
    """`managesieve_sieve_capability`: replaces the backends' SIEVE list."""
    notify_capability: str = ""
    """`managesieve_notify_capability`: replaces the backends' NOTIFY list."""

    @classmethod
    def from_config(cls, cfg: Any) -> CapabilitySettings:
        """From a loaded palomar Config (`cfg[name]`, `cfg.is_set(name)`)."""
        name = "submission_backend_capabilities"
        return cls(
            imap_capability=cfg["imap_capability"].strip(),
            submission_backend_capabilities=tuple(cfg[name]) if cfg.is_set(name) else None,
            sieve_capability=cfg["managesieve_sieve_capability"].strip(),
            notify_capability=cfg["managesieve_notify_capability"].strip(),
        )


def settings_problems(settings: CapabilitySettings) -> list[str]:
    """What makes these settings unusable on the proxy (one sentence each)."""
    problems = []
    words = settings.imap_capability.removeprefix("+").split()
    for word in words:
        if word.upper() in _IMAP_OWN or word.upper().startswith(_IMAP_OWN_PREFIXES):
            problems.append(f"imap_capability: {word} is decided by the connection state (TLS, "
                            "auth_allow_cleartext), not configured")
    if settings.imap_capability and not settings.imap_capability.startswith("+") and not any(
            w.upper() in ("IMAP4REV1", "IMAP4REV2") for w in words):
        problems.append("imap_capability: a list that replaces the default must contain IMAP4rev1 "
                        "(or start with + to add to it)")
    for name in settings.submission_backend_capabilities or ():
        if name.upper() not in BACKEND_SMTP_CAPABILITIES:
            problems.append(f"submission_backend_capabilities: {name} is not one of "
                            f"{' '.join(BACKEND_SMTP_CAPABILITIES)}")
    for label, text in (("imap_capability", settings.imap_capability),
                        ("managesieve_sieve_capability", settings.sieve_capability),
                        ("managesieve_notify_capability", settings.notify_capability)):
        if any(ch in '"\\' or ord(ch) < 0x20 for ch in text):
            problems.append(f"{label}: quotes, backslashes and control characters are not allowed")
    return problems


def apply_settings(caps: BackendCaps, settings: CapabilitySettings) -> BackendCaps:
    """The lists the proxy offers: the (merged) backend caps with the settings applied."""
    return BackendCaps(
        _imap_with_setting(caps.imap, settings.imap_capability),
        _ehlo_with_setting(caps.submission, settings.submission_backend_capabilities),
        " ".join(settings.sieve_capability.split()) or caps.sieve,
        " ".join(settings.notify_capability.split()) or caps.notify,
    )


def _imap_with_setting(learnt: tuple[str, ...], setting: str) -> tuple[str, ...]:
    """As Dovecot's imap-login builds its list: the setting (or the default), then LITERAL+/-.
    The backend's LITERAL entry stands for Dovecot's `imap_literal_minus`, which it reflects."""
    literal = tuple(c for c in learnt if c.upper() in _LITERAL)
    base = tuple(c for c in learnt if c.upper() not in _LITERAL)
    if not setting:
        return learnt
    if setting.startswith("+"):
        have = {c.upper() for c in base}
        added = tuple(w for w in setting[1:].split() if w.upper() not in have)
        return base + added + literal
    return tuple(setting.split()) + literal


def _ehlo_with_setting(learnt: tuple[str, ...], setting: tuple[str, ...] | None) -> tuple[str, ...]:
    """Dovecot's submission-login takes 8BITMIME, BINARYMIME, DSN and VRFY from
    `submission_backend_capabilities`; set on the proxy, it overrides what the backends said."""
    if setting is None:
        return learnt
    wanted = {name.upper() for name in setting}
    kept = [e for e in learnt if _keyword(e) not in _FROM_BACKEND_SETTING]
    kept += [name for name in ("8BITMIME", "BINARYMIME", "DSN", "VRFY") if name in wanted]
    if "BINARYMIME" in wanted and not any(_keyword(e) == "CHUNKING" for e in kept):
        kept.append("CHUNKING")
    return tuple(kept)
