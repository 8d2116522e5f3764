"""The bounded chaos run (one fault of every kind, about three minutes): no acknowledged message
lost or duplicated, nothing stored that was refused, no user served by two backends at once, the
cluster whole again after every fault without admin action, no traceback in any log.

The schedule comes from the seed (PALOMAR_CHAOS_SEED, default 1); a failure prints the whole
report, seed included, so the run can be repeated with `bench/chaos.py --rounds 1 --seed N`.
"""

from __future__ import annotations

import os

import pytest

from chaos import render, run_chaos
from chaos_rules import ACKED, KINDS

PROTOCOLS = ("imap-append", "lmtp", "submission")


@pytest.mark.timeout(900)
def test_no_acknowledged_message_is_lost_or_duplicated_under_faults() -> None:
    seed = int(os.environ.get("PALOMAR_CHAOS_SEED", "1"))
    outcome = run_chaos(seed, seconds=0, rounds=1, gap=(1.0, 3.0))  # shorter gaps: about 3 minutes
    report = render(outcome, f"`tests/chaos/test_chaos.py` (seed {seed})")
    assert outcome.ledger is not None
    assert sorted(e.fault.kind for e in outcome.executed) == sorted(KINDS), report
    for protocol in PROTOCOLS:  # the run did carry mail of every kind
        assert any(ACKED in m.outcomes for m in outcome.ledger.messages if m.protocol == protocol), protocol
    for protocol in ("imap", "pop3", "lmtp", "submission"):
        assert any(s.ok for s in outcome.ledger.sessions if s.protocol == protocol), protocol
    assert outcome.samples > 0, "doveadm who was never sampled"
    assert outcome.failures() == [], report
