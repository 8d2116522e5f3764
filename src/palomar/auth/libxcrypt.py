"""The system's libxcrypt through ctypes, for the crypt(3) family of password hashes.

Python's ``crypt`` module is deprecated and gone in 3.13, and stored Dovecot hashes
(``$6$``, ``$5$``, ``$2y$``, ``$1$``, ``$y$``, DES) must keep verifying, so we call the
same library Dovecot itself uses. ``crypt_rn`` works on a caller-owned buffer, which makes
it safe to call from several threads at once.
"""

from __future__ import annotations

import ctypes
import errno
import threading

_LIBRARY_NAMES = ("libcrypt.so.1", "libcrypt.so.2", "libcrypt.so")
# sizeof(struct crypt_data) in libxcrypt; crypt_rn checks the size we pass.
_CRYPT_DATA_SIZE = 32768
_SETTING_SIZE = 256


class CryptUnavailableError(RuntimeError):
    """libxcrypt could not be loaded, so crypt-family hashes cannot be verified or made."""


class CryptSettingError(ValueError):
    """The stored hash (the crypt "setting") is not one libxcrypt accepts."""


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        for name in _LIBRARY_NAMES:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
            except OSError:
                continue
            try:
                lib.crypt_rn.restype = ctypes.c_char_p
                lib.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
                lib.crypt_gensalt_rn.restype = ctypes.c_char_p
                lib.crypt_gensalt_rn.argtypes = [
                    ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int,
                    ctypes.c_char_p, ctypes.c_int,
                ]
            except AttributeError:
                continue
            _lib = lib
            return lib
        raise CryptUnavailableError("libxcrypt (libcrypt.so.1 with crypt_rn) is not available on this system")


def crypt(phrase: bytes, setting: bytes) -> bytes | None:
    """Hash ``phrase`` with ``setting`` (a full stored hash or a salt string).

    Returns None when the phrase cannot be hashed at all (too long, contains NUL): such a
    phrase can never match. Raises CryptSettingError when the setting is invalid.
    """
    if b"\0" in phrase or b"\0" in setting:
        return None
    lib = _library()
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    ctypes.set_errno(0)
    out = lib.crypt_rn(phrase, setting, data, _CRYPT_DATA_SIZE)
    err = ctypes.get_errno()
    if out is None:
        if err == errno.ERANGE:
            return None
        raise CryptSettingError("stored crypt hash is malformed or uses an unsupported method")
    if out.startswith(b"*"):
        raise CryptSettingError("stored crypt hash is malformed or uses an unsupported method")
    return out


def gensalt(prefix: bytes, count: int = 0) -> bytes:
    """A fresh setting string for ``prefix`` (``$6$``, ``$2y$``...) with OS randomness."""
    lib = _library()
    out = ctypes.create_string_buffer(_SETTING_SIZE)
    result = lib.crypt_gensalt_rn(prefix, count, None, 0, out, _SETTING_SIZE)
    if result is None or result.startswith(b"*"):
        raise CryptSettingError(f"libxcrypt cannot make a salt for {prefix.decode(errors='replace')}")
    return result
