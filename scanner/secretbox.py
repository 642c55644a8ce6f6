"""Secrets at rest (webhook secrets): encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``).

The key is ``Settings.secret_key`` when set (every process of a distributed deployment must share it: the API
encrypts, the worker that runs an audit decrypts), else a key file ``secret.key`` in the data directory,
created once with mode 0600 (the embedded mode: one machine). A database dump alone then reveals no secret.

Values written before encryption existed are plain text; they are read as they are (a Fernet token always
starts with ``gAAAAA``, which a secret never does in practice) and encrypted when next written.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from scanner.settings import Settings

KEY_FILE = "secret.key"
TOKEN_PREFIX = "gAAAAA"  # version byte 0x80 and a timestamp's leading zeros, base64url


class SecretKeyError(RuntimeError):
    """The stored secret cannot be decrypted with this process's key (a different or missing secret_key)."""


def _key(settings: Settings) -> bytes:
    if settings.secret_key:
        return settings.secret_key.get_secret_value().encode()
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_bytes().strip()
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(Fernet.generate_key())
    return path.read_bytes().strip()


def encrypt(settings: Settings, secret: str | None) -> str | None:
    if secret is None:
        return None
    return Fernet(_key(settings)).encrypt(secret.encode()).decode()


def decrypt(settings: Settings, stored: str | None) -> str | None:
    if stored is None or not stored.startswith(TOKEN_PREFIX):
        return stored  # None, or a secret stored before encryption
    try:
        return Fernet(_key(settings)).decrypt(stored.encode()).decode()
    except InvalidToken as err:
        hint = "set the same secret_key in every process"
        raise SecretKeyError(f"a stored secret does not decrypt with this process's key: {hint}") from err
