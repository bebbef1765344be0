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
from kiln.passwords import hash_parameters

TOKEN_PREFIX = "kiln_"


@functools.cache
def _hasher_with(parameters: tuple[tuple[str, int], ...]) -> PasswordHasher:
    return PasswordHasher(**dict(parameters))


def _hasher() -> PasswordHasher:
    """The hasher for new hashes, with the parameters `kiln.passwords.configure` set (existing
    hashes keep verifying whatever theirs)."""
    return _hasher_with(hash_parameters())


@functools.cache
def _dummy_hash(parameters: tuple[tuple[str, int], ...]) -> str:
    """A hash of a random password, verified against when a username is unknown so that
    "no such user" and "wrong password" take the same time."""
    return _hasher_with(parameters).hash(secrets.token_urlsafe(16))


def needs_rehash(password_hash: str) -> bool:
    """Whether a hash was made with other parameters than new hashes get."""
    try:
        return _hasher().check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


def hash_password(password: str) -> str:
    """An argon2id hash of a password (salted, parameters embedded)."""
    return _hasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches `password_hash`; a missing hash never matches (but costs the same)."""
    try:
        return _hasher().verify(password_hash or _dummy_hash(hash_parameters()), password) and password_hash is not None
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
