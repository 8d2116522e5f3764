"""Two network namespaces joined by veth links, each datacenter on 127.0.0.x addresses of its own.

The host's loopback (where other test runs use Cassandra's fixed ports) is never touched: the test
process moves its own main thread into DC1's namespace, and everything it starts from there
(Cassandra nodes, site processes, clients) lives there or in DC2's namespace.

    namespace dc1                                    namespace dc2
    Cassandra 127.0.0.11, 127.0.0.12  ==dc link==    Cassandra 127.0.0.13
    site dc1 (proxy 127.0.0.1, Dovecot 127.0.0.2)    site dc2 (proxy 127.0.0.23, Dovecot 127.0.0.22)
    test clients (source 127.0.0.21) ==client link== site dc2's proxy

Loopback addresses normally never leave `lo`; `route_localnet` lets them cross the veths, and a
/32 route in the `local` table (longer than its 127.0.0.0/8) sends each far address over its link.
Cutting the dc link (both ends down) separates the Cassandra datacenters while the clients still
reach site dc2, as a WAN cut between two sites would.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from netns_tools import add_namespace, ip, setns

DC1_NODES = ("127.0.0.11", "127.0.0.12")
DC2_NODE = "127.0.0.13"
CASSANDRA_BASE = "127.0.0.10"
CLIENT = "127.0.0.21"
DC2_SITE = "127.0.0.23"


@dataclass
class TwoSites:
    dc1: str
    dc2: str
    dc_link: tuple[str, str]
    client_link: tuple[str, str]
    home: int = -1
    """The test thread's original namespace (an open fd), restored by `remove`."""
    carried: list[tuple[str, str, str]] = field(default_factory=list)
    """(namespace, far address, our source) of further addresses routed over the dc link (`carry`)."""

    @classmethod
    def create(cls, tag: str) -> TwoSites:
        net = cls(f"pal-{tag}-dc1", f"pal-{tag}-dc2", (f"pd{tag}a", f"pd{tag}b"), (f"pc{tag}a", f"pc{tag}b"))
        try:
            net._build()
            net.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            setns(f"/run/netns/{net.dc1}")
        except BaseException:
            net.remove()
            raise
        return net

    def _build(self) -> None:
        for ns in (self.dc1, self.dc2):
            add_namespace(ns)
        for a, b in (self.dc_link, self.client_link):
            ip("link", "add", a, "netns", self.dc1, "type", "veth", "peer", "name", b, "netns", self.dc2)
        self.link_up(self.dc_link)
        self.link_up(self.client_link)

    def _routes(self, link: tuple[str, str]) -> list[tuple[str, str, str, str]]:
        """(namespace, device, far address, our source) for each route over `link`."""
        a, b = link
        if link == self.dc_link:
            return ([(self.dc1, a, DC2_NODE, DC1_NODES[0])] + [(self.dc2, b, n, DC2_NODE) for n in DC1_NODES]
                    + [(ns, a if ns == self.dc1 else b, far, src) for ns, far, src in self.carried])
        return [(self.dc1, a, DC2_SITE, CLIENT), (self.dc2, b, CLIENT, DC2_SITE)]

    def link_up(self, link: tuple[str, str]) -> None:
        """Both ends up and the routes over them (a device going down loses its routes)."""
        for ns, dev in zip((self.dc1, self.dc2), link, strict=True):
            ip("-n", ns, "link", "set", dev, "up")
        for ns, dev, far, src in self._routes(link):
            ip("-n", ns, "route", "replace", "table", "local", f"{far}/32", "dev", dev, "src", src)

    def carry(self, routes: list[tuple[str, str, str]]) -> None:
        """Route (namespace, far address, our source) over the dc link too, from now on: a cut of the
        dc link then also separates whatever lives at those addresses (the sites' site hops)."""
        self.carried += routes
        self.link_up(self.dc_link)

    def link_down(self, link: tuple[str, str]) -> None:
        for ns, dev in zip((self.dc1, self.dc2), link, strict=True):
            ip("-n", ns, "link", "set", dev, "down")

    def remove(self) -> None:
        if self.home >= 0:
            setns(f"/proc/self/fd/{self.home}")
            os.close(self.home)
            self.home = -1
        for ns in (self.dc1, self.dc2):  # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
