"""%-variable templates used in passdb args and fields."""

from __future__ import annotations

import pytest

from palomar.auth.variables import Template, VariableError, expand, user_values

VALUES = {**user_values("Bob.Smith@Example.ORG"), "service": "imap", "rip": "192.0.2.1", "backend_host": "be3"}


@pytest.mark.parametrize(("template", "expected"), [
    ("%u", "Bob.Smith@Example.ORG"),
    ("%Lu", "bob.smith@example.org"),
    ("%Ln@%Ud", "bob.smith@EXAMPLE.ORG"),
    ("%{user}", "Bob.Smith@Example.ORG"),
    ("%L{username}", "bob.smith"),
    ("%{user | lower | username}", "bob.smith"),
    ("%{user|domain}", "Example.ORG"),
    ("probe-%{backend_host}", "probe-be3"),
    ("/etc/users/%d.passwd", "/etc/users/Example.ORG.passwd"),
    ("100%% %s %r", "100% imap 192.0.2.1"),
    ("%{lip}", ""),  # known but not set for this request
    ("no variables", "no variables"),
])
def test_expand(template: str, expected: str) -> None:
    assert expand(template, VALUES) == expected


@pytest.mark.parametrize("template", ["%q", "%{nosuch}", "%{user | shout}", "%{user", "trailing %", "%L", "%{}"])
def test_bad_templates(template: str) -> None:
    with pytest.raises(VariableError):
        Template.parse(template)


def test_secret_text_is_not_quoted_in_errors() -> None:
    with pytest.raises(VariableError) as info:
        Template.parse("hunter2-secret%q")
    assert "hunter2" not in str(info.value)


def test_names_and_literal() -> None:
    t = Template.parse("%Ln-%{backend_host}")
    assert t.names == {"username", "backend_host"} and not t.is_literal
    assert Template.parse("/etc/x").is_literal


def test_user_values_split_at_first_at_sign() -> None:
    assert user_values("a@b@c") == {"user": "a@b@c", "username": "a", "domain": "b@c"}
    assert user_values("plain") == {"user": "plain", "username": "plain", "domain": ""}
