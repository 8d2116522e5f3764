"""A site's load balancer address as the hop client reads it."""

import pytest

from palomar.proxy.hop_client import split_host_port


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.101", ("127.0.0.101", 7425)),
    ("127.0.0.101:7500", ("127.0.0.101", 7500)),
    ("lb.dc2.example:7500", ("lb.dc2.example", 7500)),
    ("lb.dc2.example", ("lb.dc2.example", 7425)),
    ("[::1]:7500", ("::1", 7500)),
    ("[::1]", ("::1", 7425)),
    ("::1", ("::1", 7425)),
    ("host:notaport", ("host:notaport", 7425)),
])
def test_split_host_port(address, expected):
    assert split_host_port(address, 7425) == expected
