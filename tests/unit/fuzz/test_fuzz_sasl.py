"""Fuzzing the SASL pieces every login core shares."""

from __future__ import annotations

import base64
import binascii

from hypothesis import given
from hypothesis import strategies as st

from palomar.protocols import sasl
from unit.fuzz.hostile import nasty, plain_message, sasl_response


@given(data=st.one_of(sasl_response(), st.binary(max_size=60)))
def test_b64decode_strict_raises_only_binascii_errors(data):
    try:
        decoded = sasl.b64decode_strict(data)
    except binascii.Error:
        return
    assert base64.b64encode(decoded) == data


@given(data=st.binary(max_size=100))
def test_b64_round_trip(data):
    assert sasl.b64decode_strict(base64.b64encode(data)) == data


@given(mechanism=st.sampled_from(sasl.MECHANISMS), initial=st.none() | plain_message() | nasty(8),
       steps=st.lists(st.one_of(plain_message(), nasty(8)), max_size=3))
def test_server_exchange_never_raises(mechanism, initial, steps):
    server = sasl.SaslServer(mechanism)
    step = server.start(initial)
    for response in steps:
        if not isinstance(step, sasl.Challenge):
            break
        step = server.step(response)
    assert isinstance(step, sasl.Challenge | sasl.Credentials | sasl.Rejected)
    if isinstance(step, sasl.Credentials):
        assert step.username and isinstance(step.password, str)


@given(authzid=st.text(max_size=20), authcid=st.text(min_size=1, max_size=20), password=st.text(max_size=20))
def test_plain_round_trip(authzid, authcid, password):
    try:
        message = sasl.plain_message(authzid, authcid, password)
    except ValueError:
        assert "\0" in authzid + authcid + password
        return
    step = sasl.SaslServer("PLAIN").start(message)
    assert step == sasl.Credentials(authcid, password, authzid or None)
