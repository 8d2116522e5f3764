"""The pre-login capability lists this proxy offers, learnt from the backends of its site.

The proxy answers IMAP CAPABILITY, Submission EHLO and the ManageSieve greeting before it knows
which backend a client will reach, so it offers what every backend of the site offers: it asks
each one (admin command `capabilities` over the hop; the backend reads its own Dovecot's pre-login
lists) at start-up, then every `cluster_proxy_probe_interval` the ones that have not answered yet.
A backend whose probe fails is forgotten and asked again once it answers: it may come back with
another configuration. Until the first answer the lists are Dovecot CE 2.3's defaults.

The lists are recomputed only when an answer changes them; a session reads `offered`, nothing more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

from palomar.protocols.prelogin_caps import (
    FALLBACK,
    BackendCaps,
    CapabilitySettings,
    apply_settings,
    from_backend,
    merge,
)
from palomar.proxy.hop_client import HopClient, HopFailed, HopTarget

log = logging.getLogger("palomar.proxy.capabilities")

ADMIN_COMMAND = b'{"cmd":"capabilities"}'


class SiteCapabilities:
    """The learnt caps of each backend and the lists offered to clients (settings applied)."""

    def __init__(self, settings: CapabilitySettings | None = None) -> None:
        self.settings = settings or CapabilitySettings()
        self._learnt: dict[str, BackendCaps] = {}
        self.offered: BackendCaps = apply_settings(FALLBACK, self.settings)
        """What sessions advertise: the merge of the learnt caps, else the last one, else the defaults."""
        self._logged: frozenset[tuple[str, BackendCaps]] = frozenset()

    def knows(self, host: str) -> bool:
        return host in self._learnt

    def learnt(self, host: str, caps: BackendCaps) -> None:
        if self._learnt.get(host) != caps:
            self._learnt[host] = caps
            self._recompute()

    def forget(self, host: str) -> None:
        """`host` failed a probe: ask it again when it is back (the lists stay as they are)."""
        self._learnt.pop(host, None)

    def keep_only(self, hosts: set[str]) -> None:
        """Drop backends that left the site; the others' merge is offered from now on."""
        gone = [h for h in self._learnt if h not in hosts]
        for host in gone:
            del self._learnt[host]
        if gone:
            self._recompute()

    def _recompute(self) -> None:
        if not self._learnt:
            return  # nothing answers: keep offering what was last learnt
        hosts = sorted(self._learnt)
        site = [self._learnt[h] for h in hosts]
        merged = merge(site)
        self.offered = apply_settings(merged, self.settings)
        state = frozenset(self._learnt.items())
        if len(set(site)) > 1 and state != self._logged:
            self._logged = state
            log.warning("backends disagree on their pre-login capabilities; offering only what all of them "
                        "have: %s", "; ".join(f"{h} also has {_extra(self._learnt[h], merged)}" for h in hosts
                                               if self._learnt[h] != merged) or "-")
        log.info("pre-login capabilities from %d backend(s): IMAP %s | EHLO %s | SIEVE %s | NOTIFY %s",
                 len(hosts), " ".join(self.offered.imap), ", ".join(self.offered.submission),
                 self.offered.sieve, self.offered.notify or "-")

    async def ask(self, hops: HopClient, host: str, source_ip: str) -> bool:
        """Ask `host` for its pre-login lists; True when it answered usably."""
        target = HopTarget(user="-", protocol="doveadm", session_id=f"caps-{secrets.token_hex(6)}",
                           client=(source_ip, 0), local=(source_ip, 0), client_tls=True, admin=ADMIN_COMMAND)
        outcome = await hops.connect(host, target)
        if isinstance(outcome, HopFailed):
            log.info("backend %s did not give its capabilities: %s", host, outcome.text)
            return False
        outcome.link.close()
        try:
            data = json.loads(outcome.text.decode())
            caps = from_backend(data["imap"], data["submission"], data["sieve"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("backend %s sent unusable capabilities: %s", host, exc)
            return False
        self.learnt(host, caps)
        return True


def _extra(caps: BackendCaps, merged: BackendCaps) -> str:
    """What `caps` has beyond the site's merge, for the disagreement log line."""
    extra = [c for c in caps.imap if c not in merged.imap]
    extra += [c for c in caps.submission if c not in merged.submission]
    extra += [f"sieve:{w}" for w in caps.sieve.split() if w not in merged.sieve.split()]
    extra += [f"notify:{w}" for w in (caps.notify or "").split() if w not in (merged.notify or "").split()]
    return " ".join(extra) or "other limits"


async def learn_capabilities(capabilities: SiteCapabilities, router, hops: HopClient, interval: float,
                             source_ip: str) -> None:
    """Ask every backend of the site that has not answered yet, now and every `interval` seconds."""
    while True:
        try:
            view = await router.site_view()
            hosts = {b.host for b in view.backends} if view is not None else set()
            capabilities.keep_only(hosts)
            await asyncio.gather(*(capabilities.ask(hops, h, source_ip) for h in sorted(hosts)
                                   if not capabilities.knows(h)))
        except Exception as exc:  # the GeoDB may be briefly unreachable: try again next round
            log.warning("learning backend capabilities failed: %s", exc)
        await asyncio.sleep(interval)
