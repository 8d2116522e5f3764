"""Ports picked for test servers are bound later, so one process must never be handed one twice."""

from palomar.devcluster.net import free_port, free_ports


def test_a_port_is_never_handed_out_twice() -> None:
    # the kernel picks among ~28,000 ephemeral ports: 3,000 picks would repeat one about 150 times
    picked = [free_port("127.0.0.1") for _ in range(2500)] + free_ports("127.0.0.1", 500)
    assert len(set(picked)) == len(picked)
