"""The per-server LocalDB (SQLite on tmpfs): GeoDB cache and this server's move memory."""

from palomar.localdb.store import DEFAULT_PATH, LocalDB, LocalDBError, LocalGroup, LocalUser, mask_to_glob

__all__ = ["DEFAULT_PATH", "LocalDB", "LocalDBError", "LocalGroup", "LocalUser", "mask_to_glob"]
