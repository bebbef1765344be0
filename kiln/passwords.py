"""Local password policy and the argon2id parameters of password hashes.

A local password must have at least `MIN_PASSWORD_LENGTH` characters and must not be one of
the common passwords shipped in `kiln/data/common-passwords.txt.gz` (Django's list of 19,640,
compared case-insensitively; kiln/data/README.md cites it). NIST SP 800-63B asks for exactly
these two checks and no composition rules.

Hashes are argon2id with `KILN_ARGON2_TIME_COST`, `KILN_ARGON2_MEMORY_KIB` and
`KILN_ARGON2_PARALLELISM` (defaults: argon2-cffi's, RFC 9106's second recommended choice: 3
iterations, 64 MiB, 4 lanes). `configure(settings)` applies them to every hash made from then
on; a hash made with other parameters still verifies, and `kiln.users.authenticate` rehashes
it with the current ones at the user's next successful sign-in.
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

from kiln.settings import Settings

MIN_PASSWORD_LENGTH = 12

# argon2id parameters for new hashes (argon2-cffi's defaults until `configure`). Kept here, not in
# kiln.security, so that commands which never hash (most CLI commands) do not import argon2.
_hash_parameters: dict[str, int] = {}


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords (lower-case)."""
    data = resources.files("kiln").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(line.strip() for line in gzip.decompress(data).decode().splitlines() if line.strip())


def password_problem(password: str) -> str | None:
    """What is wrong with a new local password (a sentence fragment for `password: …`), or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if password.lower() in common_passwords():
        return "is one of the most common passwords (Kiln refuses the 19,640 of Django's list): choose another"
    return None


def configure(settings: Settings) -> None:
    """Hash new passwords with the argon2id parameters of `settings` (applied by kiln.security at
    its next hash)."""
    global _hash_parameters
    _hash_parameters = {"time_cost": settings.argon2_time_cost, "memory_cost": settings.argon2_memory_kib,
                        "parallelism": settings.argon2_parallelism}


def hash_parameters() -> tuple[tuple[str, int], ...]:
    """The argon2id parameters new hashes get, as sorted `PasswordHasher` keyword pairs (empty:
    argon2-cffi's defaults)."""
    return tuple(sorted(_hash_parameters.items()))
