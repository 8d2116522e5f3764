"""Authentication: password schemes, passdb drivers (passwd-file, static) and the passdb chain."""

from palomar.auth.passdb import AuthRequest, AuthResult, AuthStatus, Passdb, PassdbChain, PassdbConfigError
from palomar.auth.schemes import PasswordSchemeError, hash_password, verify_password

__all__ = [
    "AuthRequest",
    "AuthResult",
    "AuthStatus",
    "Passdb",
    "PassdbChain",
    "PassdbConfigError",
    "PasswordSchemeError",
    "hash_password",
    "verify_password",
]
