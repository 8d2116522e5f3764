"""Password schemes checked against Dovecot itself (`doveadm pw`) and fixed vectors."""

from __future__ import annotations

import base64
import hashlib
import subprocess

import pytest

from palomar.auth import libxcrypt
from palomar.auth.schemes import (
    PasswordSchemeError,
    hash_password,
    is_known_scheme,
    parse_stored,
    verify_password,
)

PASSWORD = "S3cret pässword!"

DOVEADM_SCHEMES = [
    "PLAIN", "CLEARTEXT", "CRYPT", "MD5-CRYPT", "SHA256-CRYPT", "SHA512-CRYPT", "BLF-CRYPT",
    "SHA", "SHA1", "SHA256", "SHA512", "SSHA", "SSHA256", "SSHA512", "SMD5", "PLAIN-MD5", "LDAP-MD5",
    "PBKDF2", "ARGON2I", "ARGON2ID", "SCRAM-SHA-1", "SCRAM-SHA-256",
    "SSHA.HEX", "SHA256.HEX", "SSHA512.B64", "PLAIN.B64",
]


def doveadm_hash(scheme: str, password: str) -> str:
    out = subprocess.run(
        ["doveadm", "-O", "pw", "-s", scheme, "-p", password],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return out.stdout.strip()


def doveadm_verifies(stored: str, password: str) -> bool:
    out = subprocess.run(
        ["doveadm", "-O", "pw", "-t", stored, "-p", password],
        capture_output=True, text=True, timeout=30,
    )
    return out.returncode == 0


@pytest.mark.parametrize("scheme", DOVEADM_SCHEMES)
def test_dovecot_generated_hash_verifies(scheme: str) -> None:
    stored = doveadm_hash(scheme, PASSWORD)
    assert stored.upper().startswith("{" + scheme.upper() + "}")
    assert verify_password(stored, PASSWORD, username="alice")
    assert not verify_password(stored, PASSWORD + "x", username="alice")
    assert not verify_password(stored, "", username="alice")


@pytest.mark.parametrize("scheme", DOVEADM_SCHEMES)
def test_our_hash_verifies_in_dovecot(scheme: str) -> None:
    stored = hash_password(scheme, PASSWORD)
    assert stored.startswith("{" + scheme.upper() + "}")
    assert doveadm_verifies(stored, PASSWORD)
    assert not doveadm_verifies(stored, "wrong")
    assert verify_password(stored, PASSWORD, username="alice")
    assert not verify_password(stored, "wrong", username="alice")


@pytest.mark.parametrize("scheme", ["SSHA512", "SHA512-CRYPT", "PBKDF2", "ARGON2ID", "BLF-CRYPT"])
def test_generated_hashes_are_salted(scheme: str) -> None:
    assert hash_password(scheme, PASSWORD) != hash_password(scheme, PASSWORD)


# Vectors from Dovecot's own test suite (password "test"), see spec/protocols.md §7.3.
FIXED_VECTORS = [
    ("{PLAIN}test", "test"),
    ("{CRYPT}//EsnG9FLTKjo", "test"),
    ("{SHA512-CRYPT}$6$0123456789abcdef$vNATSYYTivQfXwPTUT4q.sRFLs/sgxDXaPipzRlX3WOO4r1NcR.Og5OoU2Cd2agm1WA3pCJ30"
     "JU4EKMxpZaDy/", "test"),
    ("{SHA512-CRYPT}$6$rounds=1000$0123456789abcdef$ZIAd5WqfyLkpvsVCVUU1GrvqaZTqvhJoouxdSqJO71l9Ld3tVrfOatEjarhgh"
     "vEYADkq//LpDnTeO90tcbtHR1", "08/15!test~4711"),
    ("{SHA256-CRYPT}$5$rounds=1000$0123456789abcdef$K/DksR0DT01hGc8g/kt9McEgrbFMKi9qrb1jehe7hn4", "08/15!test~4711"),
    ("{BLF-CRYPT}$2y$05$11ipvo5dR6CwkzwmhwM26OXgzXwhV2PyPuLV.Qi31ILcRcThQpEiW", "test"),
    ("{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$f2iuP4aUeNMrgu34fhOkkg$1XSZZMWlIs0zmE+snlUIcLADO3GXbA2O/hsQmmc317k",
     "test"),
    ("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uArHd5GJSEx0ty85Cc",
     "test"),
    ("{ARGON2}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uArHd5GJSEx0ty85Cc",
     "test"),
    ("{SHA1}qUqP5cyxm6YcTAhz05Hph5gvu9M=", "test"),
    ("{SHA256}n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=", "test"),
    ("{SSHA}H/zrDv8FXUu1JmwvVYijfrYEF34jVZcO", "test"),
    ("{SSHA512}qWwv8RJmIrdxkMnpdAlJ6F/o1ojlCxB+JAwYsklUnOdiSM3BKkqCuia9Z9oxOjwF9qmSgFNH5BIhsuAVf6XQ3XNhbHRzYWx0",
     "test"),
    ("{PBKDF2}$1$bUnT4Pl7yFtYX0KU$5000$50a83cafdc517b9f46519415e53c6a858908680a", "test"),
    ("{MD5-CRYPT}$1$GgvxyNz8$OjZhLh4P.gF1lxYEbLZ3e/", "test"),
    ("{PLAIN.b64}e1x9OiEiCg==", '{\\}:!"\n'),
    ("{sha256}n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=", "test"),  # scheme names are case-insensitive
]


@pytest.mark.parametrize(("stored", "password"), FIXED_VECTORS)
def test_fixed_vectors(stored: str, password: str) -> None:
    assert verify_password(stored, password, username="u")
    assert not verify_password(stored, password + "!", username="u")


def test_ssha512_layout_matches_the_documented_recipe() -> None:
    salt = b"saltsalt"
    stored = "{SSHA512}" + base64.b64encode(hashlib.sha512(b"test" + salt).digest() + salt).decode()
    assert verify_password(stored, "test", username="u")


def test_hex_digest_is_detected_by_length() -> None:
    stored = "{SHA256}" + hashlib.sha256(b"test").hexdigest()
    assert verify_password(stored, "test", username="u")
    assert not verify_password(stored, "tesT", username="u")


def test_no_prefix_uses_default_scheme() -> None:
    assert verify_password("test", "test", username="u", default_scheme="PLAIN")
    assert not verify_password("test", "other", username="u", default_scheme="PLAIN")
    # Dovecot's passwd-file default is CRYPT: a bare DES/SHA512 crypt string verifies.
    assert verify_password("//EsnG9FLTKjo", "test", username="u")
    sha512 = hash_password("SHA512-CRYPT", "pw").removeprefix("{SHA512-CRYPT}")
    assert verify_password(sha512, "pw", username="u")
    # A cleartext password stored without a scheme is not accepted as CRYPT.
    assert not verify_password("secret", "secret", username="u")


def test_pwdfile_suffix_forms() -> None:
    assert verify_password("//EsnG9FLTKjo[13]", "test", username="u", default_scheme="PLAIN")
    assert verify_password("$1$GgvxyNz8$OjZhLh4P.gF1lxYEbLZ3e/[34]", "test", username="u", default_scheme="PLAIN")


def test_scheme_must_match_crypt_prefix() -> None:
    md5 = "$1$GgvxyNz8$OjZhLh4P.gF1lxYEbLZ3e/"
    with pytest.raises(PasswordSchemeError):
        verify_password("{SHA512-CRYPT}" + md5, "test", username="u")
    assert verify_password("{CRYPT}" + md5, "test", username="u")


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(PasswordSchemeError, match="NOSUCH"):
        verify_password("{NOSUCH}abcdef", "abcdef", username="u")
    with pytest.raises(PasswordSchemeError):
        hash_password("NOSUCH", "x")
    with pytest.raises(PasswordSchemeError):
        verify_password("whatever", "whatever", username="u", default_scheme="NOSUCH")
    assert not is_known_scheme("NOSUCH")
    assert is_known_scheme("ssha512.hex")


MALFORMED = [
    "{SSHA}!!!not-base64!!!",
    "{SSHA}AAAA",  # too short to hold digest and salt
    "{SHA256}abc",
    "{SHA256}" + base64.b64encode(b"short").decode(),
    "{PBKDF2}$1$salt$notanumber$50a83cafdc517b9f46519415e53c6a858908680a",
    "{PBKDF2}$1$salt$5000$zz",
    "{PBKDF2}$2$salt$5000$50a83cafdc517b9f46519415e53c6a858908680a",
    "{PBKDF2}$1$salt$0$50a83cafdc517b9f46519415e53c6a858908680a",
    "{ARGON2ID}$argon2id$v=19$garbage",
    "{ARGON2I}$argon2id$v=19$m=65536,t=3,p=1$vBb99oJ12p3WAdYlaMHz1A$jtFOtbo/sYV9OSlTxDo/nVNq3uArHd5GJSEx0ty85Cc",
    "{BLF-CRYPT}$2y$99$short",
    "{SHA512-CRYPT}$6$rounds=abc$salt$x",
    "{CRYPT}",
    "{CRYPT}$9$nosuchmethod$x",
    "{SCRAM-SHA-1}1,2",
    "{PLAIN.b64}%%%",
    "{DES-CRYPT}$6$toolong",
]


@pytest.mark.parametrize("stored", MALFORMED)
def test_malformed_stored_values_raise_without_echoing_data(stored: str) -> None:
    with pytest.raises(PasswordSchemeError) as info:
        verify_password(stored, "test", username="u")
    data = stored.partition("}")[2]
    assert len(data) < 4 or data not in str(info.value)


def test_crypt_rejects_phrases_it_cannot_hash() -> None:
    stored = hash_password("SHA512-CRYPT", "abc")
    assert not verify_password(stored, "abc\0def", username="u")
    assert libxcrypt.crypt(b"abc\0", b"$6$saltsalt$") is None
    assert not verify_password(stored, "a" * 100_000, username="u")


def test_parse_stored_hides_data_in_repr() -> None:
    parsed = parse_stored("{SSHA512.HEX}deadbeef")
    assert (parsed.scheme, parsed.encoding) == ("SSHA512", "hex")
    assert "deadbeef" not in repr(parsed)


def test_unicode_and_long_passwords_round_trip() -> None:
    for scheme in ("SSHA256", "PBKDF2", "SHA512-CRYPT", "ARGON2I", "PLAIN"):
        for password in ("日本語パスワード", "x" * 400, " spaced  out "):
            stored = hash_password(scheme, password)
            assert verify_password(stored, password, username="u")
            assert not verify_password(stored, password.strip() + "y", username="u")
