"""Dovecot password schemes: verify stored ``{SCHEME}data`` passwords and make new ones.

Stored strings must stay interchangeable with Dovecot's (``doveadm pw`` output verifies here
and ours verifies in Dovecot), so the formats follow Dovecot's exactly: see
spec/protocols.md §7.3. Every comparison is constant-time. Neither the plaintext nor the
stored hash ever appears in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import argon2
from argon2 import exceptions as argon2_exceptions
from argon2 import low_level as argon2_low

from palomar.auth import libxcrypt

# Dovecot's default for passwd-file (and `passdb_default_password_scheme`).
DEFAULT_SCHEME = "CRYPT"

_SCHEME_RE = re.compile(r"^\{([A-Za-z0-9_.-]+)\}")
_ENCODINGS = {"HEX": "hex", "B64": "b64", "BASE64": "b64"}
_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PBKDF2_DEFAULT_ROUNDS = 5000
_PBKDF2_MAX_ROUNDS = 1 << 24
_SCRAM_DEFAULT_ITERATIONS = 4096
_SCRAM_MAX_ITERATIONS = 1 << 24


class PasswordSchemeError(ValueError):
    """A stored password uses an unknown scheme or is malformed (never a plain mismatch)."""


@dataclass(frozen=True)
class StoredPassword:
    """A stored password split into scheme, optional encoding suffix and data."""

    scheme: str
    encoding: str | None
    data: str = field(repr=False)


def parse_stored(stored: str, default_scheme: str = DEFAULT_SCHEME) -> StoredPassword:
    """Split ``{SCHEME.ENC}data``; no prefix means ``default_scheme`` (or the pwdfile ``[13]`` forms)."""
    match = _SCHEME_RE.match(stored)
    if match:
        name, data = match.group(1), stored[match.end():]
    elif stored.endswith("[13]"):
        name, data = "CRYPT", stored[:-4]
    elif stored.endswith("[34]"):
        name, data = "MD5-CRYPT", stored[:-4]
    else:
        name, data = default_scheme, stored
    scheme, encoding = _split_encoding(name)
    return StoredPassword(scheme, encoding, data)


def _split_encoding(name: str) -> tuple[str, str | None]:
    upper = name.upper()
    base, dot, suffix = upper.rpartition(".")
    if dot and suffix in _ENCODINGS:
        return base, _ENCODINGS[suffix]
    return upper, None


def is_known_scheme(name: str) -> bool:
    """True when ``name`` (optionally with ``.HEX``/``.B64``) is a scheme this module handles."""
    return _split_encoding(name)[0] in _SCHEMES


def supported_schemes() -> frozenset[str]:
    """All scheme names understood by verify_password and hash_password."""
    return frozenset(_SCHEMES)


def verify_password(stored: str, plaintext: str, *, username: str, default_scheme: str = DEFAULT_SCHEME) -> bool:
    """True when ``plaintext`` matches ``stored``.

    Raises PasswordSchemeError (never anything else) when the scheme is unknown or the
    stored value is malformed, so the caller can report an internal failure instead of a
    wrong password. ``username`` is part of the contract because some Dovecot schemes salt
    with it; none of the schemes implemented here do.
    """
    parsed = parse_stored(stored, default_scheme)
    scheme = _SCHEMES.get(parsed.scheme)
    if scheme is None:
        raise PasswordSchemeError(f"unknown password scheme {parsed.scheme!r}")
    try:
        phrase = plaintext.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    try:
        return scheme.verify(parsed, phrase)
    except PasswordSchemeError:
        raise
    except libxcrypt.CryptUnavailableError as exc:
        raise PasswordSchemeError(f"{parsed.scheme}: {exc}") from None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise PasswordSchemeError(f"malformed {parsed.scheme} password data") from None


_CHEAP_SCHEMES = frozenset({
    "PLAIN", "CLEARTEXT", "SHA", "SHA1", "SHA256", "SHA512", "PLAIN-MD5", "LDAP-MD5",
    "SSHA", "SSHA256", "SSHA512", "SMD5",
})
"""Schemes whose check is one comparison or one digest (microseconds): safe on the event loop.
The crypt family, PBKDF2, ARGON2 and SCRAM are deliberately slow and belong in a thread."""


def is_cheap(stored: str, default_scheme: str = DEFAULT_SCHEME) -> bool:
    """True when verifying against ``stored`` costs microseconds, not milliseconds."""
    return parse_stored(stored, default_scheme).scheme in _CHEAP_SCHEMES


def hash_password(scheme: str, plaintext: str) -> str:
    """A new ``{SCHEME}data`` string for ``plaintext``, as ``doveadm pw -s SCHEME`` would make."""
    base, encoding = _split_encoding(scheme)
    impl = _SCHEMES.get(base)
    if impl is None or impl.generate is None:
        raise PasswordSchemeError(f"cannot generate passwords with scheme {base!r}")
    phrase = plaintext.encode("utf-8", "surrogateescape")
    try:
        data = impl.generate(phrase, encoding)
    except libxcrypt.CryptUnavailableError as exc:
        raise PasswordSchemeError(f"{base}: {exc}") from None
    label = base if encoding is None else f"{base}.{'HEX' if encoding == 'hex' else 'B64'}"
    return f"{{{label}}}{data}"


# --- shared helpers -----------------------------------------------------------------------


def _decode_text(parsed: StoredPassword) -> str:
    """Data of a string-valued scheme, after undoing a ``.B64``/``.HEX`` suffix."""
    if parsed.encoding is None:
        return parsed.data
    return _decode_raw(parsed.data, parsed.encoding).decode("utf-8")


def _decode_raw(data: str, encoding: str) -> bytes:
    if encoding == "hex":
        return bytes.fromhex(data)
    return base64.b64decode(data.strip(), validate=True)


def _encode_raw(raw: bytes, encoding: str) -> str:
    return raw.hex() if encoding == "hex" else base64.b64encode(raw).decode("ascii")


def _wrap_text(text: str, encoding: str | None) -> str:
    return text if encoding is None else _encode_raw(text.encode("utf-8"), encoding)


def _salt_string(length: int = 16) -> str:
    return "".join(secrets.choice(_SALT_CHARS) for _ in range(length))


@dataclass(frozen=True)
class _Scheme:
    verify: Callable[[StoredPassword, bytes], bool]
    generate: Callable[[bytes, str | None], str] | None


# --- PLAIN --------------------------------------------------------------------------------


def _plain_verify(parsed: StoredPassword, phrase: bytes) -> bool:
    if parsed.encoding is None:
        stored = parsed.data.encode("utf-8", "surrogateescape")
    else:
        stored = _decode_raw(parsed.data, parsed.encoding)
    return hmac.compare_digest(stored, phrase)


def _plain_generate(phrase: bytes, encoding: str | None) -> str:
    return phrase.decode("utf-8", "surrogateescape") if encoding is None else _encode_raw(phrase, encoding)


# --- unsalted and salted digests ----------------------------------------------------------


def _digest_scheme(algorithm: str, default_encoding: str) -> _Scheme:
    size = hashlib.new(algorithm).digest_size

    def decode(parsed: StoredPassword) -> bytes:
        data = parsed.data.strip()
        encoding = parsed.encoding
        if encoding is None:
            looks_hex = len(data) == 2 * size and all(c in "0123456789abcdefABCDEF" for c in data)
            encoding = "hex" if looks_hex else default_encoding
        raw = _decode_raw(data, encoding)
        if len(raw) != size:
            raise PasswordSchemeError(f"{parsed.scheme} digest has the wrong length")
        return raw

    def verify(parsed: StoredPassword, phrase: bytes) -> bool:
        return hmac.compare_digest(decode(parsed), hashlib.new(algorithm, phrase).digest())

    def generate(phrase: bytes, encoding: str | None) -> str:
        return _encode_raw(hashlib.new(algorithm, phrase).digest(), encoding or default_encoding)

    return _Scheme(verify, generate)


def _salted_scheme(algorithm: str) -> _Scheme:
    size = hashlib.new(algorithm).digest_size

    def verify(parsed: StoredPassword, phrase: bytes) -> bool:
        raw = _decode_raw(parsed.data, parsed.encoding or "b64")
        if len(raw) <= size:
            raise PasswordSchemeError(f"{parsed.scheme} data is too short to hold a salt")
        digest, salt = raw[:size], raw[size:]
        return hmac.compare_digest(digest, hashlib.new(algorithm, phrase + salt).digest())

    def generate(phrase: bytes, encoding: str | None) -> str:
        salt = os.urandom(8)
        return _encode_raw(hashlib.new(algorithm, phrase + salt).digest() + salt, encoding or "b64")

    return _Scheme(verify, generate)


# --- crypt(3) family ----------------------------------------------------------------------


def _crypt_scheme(prefixes: tuple[str, ...] | None, gen_prefix: bytes | None, gen_count: int = 0) -> _Scheme:
    """``prefixes`` restricts which crypt methods a scheme accepts; None accepts any."""

    def verify(parsed: StoredPassword, phrase: bytes) -> bool:
        setting = _decode_text(parsed)
        if prefixes is not None and not setting.startswith(prefixes):
            raise PasswordSchemeError(f"{parsed.scheme} data does not have the expected prefix")
        if parsed.scheme == "DES-CRYPT" and (len(setting) != 13 or setting.startswith("$")):
            raise PasswordSchemeError("DES-CRYPT data is not 13 characters")
        if not setting:
            raise PasswordSchemeError(f"{parsed.scheme} data is empty")
        try:
            computed = libxcrypt.crypt(phrase, setting.encode("ascii"))
        except libxcrypt.CryptSettingError as exc:
            raise PasswordSchemeError(f"{parsed.scheme}: {exc}") from None
        except UnicodeEncodeError:
            raise PasswordSchemeError(f"{parsed.scheme} data is not ASCII") from None
        if computed is None:
            return False
        return hmac.compare_digest(computed, setting.encode("ascii"))

    def generate(phrase: bytes, encoding: str | None) -> str:
        assert gen_prefix is not None
        if b"\0" in phrase:
            raise PasswordSchemeError("crypt passwords cannot contain NUL")
        out = libxcrypt.crypt(phrase, libxcrypt.gensalt(gen_prefix, gen_count))
        if out is None:
            raise PasswordSchemeError("password is too long for crypt")
        return _wrap_text(out.decode("ascii"), encoding)

    return _Scheme(verify, generate if gen_prefix is not None else None)


# --- PBKDF2 (Dovecot's own format) --------------------------------------------------------


def _pbkdf2_verify(parsed: StoredPassword, phrase: bytes) -> bool:
    parts = _decode_text(parsed).split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "1" or not parts[2]:
        raise PasswordSchemeError("PBKDF2 data is not $1$salt$rounds$hexdigest")
    rounds = int(parts[3]) if parts[3].isdigit() else 0
    if not 0 < rounds <= _PBKDF2_MAX_ROUNDS:
        raise PasswordSchemeError("PBKDF2 rounds are out of range")
    expected = bytes.fromhex(parts[4])
    if len(expected) != 20:
        raise PasswordSchemeError("PBKDF2 digest has the wrong length")
    computed = hashlib.pbkdf2_hmac("sha1", phrase, parts[2].encode("utf-8"), rounds, 20)
    return hmac.compare_digest(expected, computed)


def _pbkdf2_generate(phrase: bytes, encoding: str | None) -> str:
    salt = _salt_string(16)
    digest = hashlib.pbkdf2_hmac("sha1", phrase, salt.encode("ascii"), _PBKDF2_DEFAULT_ROUNDS, 20)
    return _wrap_text(f"$1${salt}${_PBKDF2_DEFAULT_ROUNDS}${digest.hex()}", encoding)


# --- ARGON2 -------------------------------------------------------------------------------


def _argon2_scheme(prefixes: tuple[str, ...], gen: tuple[argon2.Type, int, int] | None) -> _Scheme:
    def verify(parsed: StoredPassword, phrase: bytes) -> bool:
        encoded = _decode_text(parsed)
        if not encoded.startswith(prefixes):
            raise PasswordSchemeError(f"{parsed.scheme} data does not have the expected prefix")
        variant = argon2.Type.ID if encoded.startswith("$argon2id$") else argon2.Type.I
        try:
            return argon2_low.verify_secret(encoded.encode("ascii"), phrase, variant)
        except argon2_exceptions.VerifyMismatchError:
            return False
        except (argon2_exceptions.VerificationError, argon2_exceptions.InvalidHashError):
            raise PasswordSchemeError(f"malformed {parsed.scheme} password data") from None

    def generate(phrase: bytes, encoding: str | None) -> str:
        assert gen is not None
        variant, memory_kib, iterations = gen
        encoded = argon2_low.hash_secret(
            phrase, os.urandom(16), time_cost=iterations, memory_cost=memory_kib,
            parallelism=1, hash_len=32, type=variant,
        )
        return _wrap_text(encoded.decode("ascii"), encoding)

    return _Scheme(verify, generate if gen is not None else None)


# --- SCRAM --------------------------------------------------------------------------------


def _scram_scheme(algorithm: str) -> _Scheme:
    def salted(phrase: bytes, salt: bytes, iterations: int) -> bytes:
        return hashlib.pbkdf2_hmac(algorithm, phrase, salt, iterations)

    def verify(parsed: StoredPassword, phrase: bytes) -> bool:
        parts = _decode_text(parsed).split(",")
        if len(parts) != 4 or not parts[0].isdigit():
            raise PasswordSchemeError(f"{parsed.scheme} data is not iter,salt,storedkey,serverkey")
        iterations = int(parts[0])
        if not 0 < iterations <= _SCRAM_MAX_ITERATIONS:
            raise PasswordSchemeError(f"{parsed.scheme} iterations are out of range")
        salt = _decode_raw(parts[1], "b64")
        stored_key = _decode_raw(parts[2], "b64")
        client_key = hmac.digest(salted(phrase, salt, iterations), b"Client Key", algorithm)
        return hmac.compare_digest(stored_key, hashlib.new(algorithm, client_key).digest())

    def generate(phrase: bytes, encoding: str | None) -> str:
        salt = os.urandom(16)
        key = salted(phrase, salt, _SCRAM_DEFAULT_ITERATIONS)
        stored_key = hashlib.new(algorithm, hmac.digest(key, b"Client Key", algorithm)).digest()
        server_key = hmac.digest(key, b"Server Key", algorithm)
        fields = [str(_SCRAM_DEFAULT_ITERATIONS)] + [base64.b64encode(v).decode() for v in (salt, stored_key, server_key)]
        return _wrap_text(",".join(fields), encoding)

    return _Scheme(verify, generate)


_BLF_PREFIXES = ("$2y$", "$2b$", "$2a$")

_SCHEMES: dict[str, _Scheme] = {
    "PLAIN": _Scheme(_plain_verify, _plain_generate),
    "CLEARTEXT": _Scheme(_plain_verify, _plain_generate),
    # Dovecot 2.3.19+ generates CRYPT as bcrypt with cost 5; verification accepts any method.
    "CRYPT": _crypt_scheme(None, b"$2y$", 5),
    "DES-CRYPT": _crypt_scheme(None, None),
    "MD5-CRYPT": _crypt_scheme(("$1$",), b"$1$"),
    "MD5": _crypt_scheme(("$1$",), b"$1$"),
    "SHA256-CRYPT": _crypt_scheme(("$5$",), b"$5$"),
    "SHA512-CRYPT": _crypt_scheme(("$6$",), b"$6$"),
    "BLF-CRYPT": _crypt_scheme(_BLF_PREFIXES, b"$2y$", 5),
    "SHA": _digest_scheme("sha1", "b64"),
    "SHA1": _digest_scheme("sha1", "b64"),
    "SHA256": _digest_scheme("sha256", "b64"),
    "SHA512": _digest_scheme("sha512", "b64"),
    "PLAIN-MD5": _digest_scheme("md5", "hex"),
    "LDAP-MD5": _digest_scheme("md5", "b64"),
    "SSHA": _salted_scheme("sha1"),
    "SSHA256": _salted_scheme("sha256"),
    "SSHA512": _salted_scheme("sha512"),
    "SMD5": _salted_scheme("md5"),
    "PBKDF2": _Scheme(_pbkdf2_verify, _pbkdf2_generate),
    "ARGON2I": _argon2_scheme(("$argon2i$",), (argon2.Type.I, 32768, 4)),
    "ARGON2ID": _argon2_scheme(("$argon2id$",), (argon2.Type.ID, 65536, 3)),
    "ARGON2": _argon2_scheme(("$argon2i$", "$argon2id$"), None),
    "SCRAM-SHA-1": _scram_scheme("sha1"),
    "SCRAM-SHA-256": _scram_scheme("sha256"),
}
