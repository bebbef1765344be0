"""Password hashing (argon2id), API token material and encryption of secrets at rest."""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kiln.logs import remember_secret

TOKEN_PREFIX = "kiln_"

_hasher = PasswordHasher()  # argon2-cffi's defaults until `configure_hasher` (kiln.passwords.configure)


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password, verified against when a username is unknown so that
    "no such user" and "wrong password" take the same time."""
    return _hasher.hash(secrets.token_urlsafe(16))


def configure_hasher(*, time_cost: int, memory_kib: int, parallelism: int) -> None:
    """Make new hashes with these argon2id parameters (existing hashes keep verifying)."""
    global _hasher
    if (_hasher.time_cost, _hasher.memory_cost, _hasher.parallelism) != (time_cost, memory_kib, parallelism):
        _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        _dummy_hash.cache_clear()


def needs_rehash(password_hash: str) -> bool:
    """Whether a hash was made with other parameters than new hashes get."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


def hash_password(password: str) -> str:
    """An argon2id hash of a password (salted, parameters embedded)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash`; a missing hash never matches (but costs the same)."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_api_token() -> str:
    """A fresh personal API token: `kiln_` and 43 URL-safe random characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored (the token itself never is)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_display_prefix(token: str) -> str:
    """The first characters of a token, safe to show in listings to tell tokens apart."""
    return token[: len(TOKEN_PREFIX) + 6]


class SecretBox:
    """Encrypts small secrets (BMC passwords) for storage, with a key derived from the secret key.

    Fernet (AES-128-CBC + HMAC-SHA256); the key is derived with HKDF so the secret key itself
    is never used directly as a cipher key.
    """

    def __init__(self, secret_key: str):
        remember_secret(secret_key)
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"kiln secret box v1").derive(
            secret_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def encrypt(self, plaintext: str) -> str:
        """Ciphertext (URL-safe text) for `plaintext`."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext of `ciphertext`; ValueError when it was made with another key or altered."""
        try:
            plaintext = self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise ValueError("secret cannot be decrypted: wrong KILN_SECRET_KEY or corrupted value") from None
        remember_secret(plaintext)  # never in a log line, even logged by mistake
        return plaintext
