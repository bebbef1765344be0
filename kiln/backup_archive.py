"""The backup archive format: a `.tar.gz` of a manifest, the database dump and the settings.

`manifest.json` names the format and its version, the Kiln version, schema revision and
database kind, the SHA-256 of every other member and `secret_key_check` (an HMAC telling
whether a key is the backed-up one without revealing it). The secret key itself is only ever
stored encrypted under a passphrase (`secret.key.enc`, scrypt + Fernet). `kiln.backup` puts
archives together and restores them; this module reads, writes and checks their parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy.engine import make_url

from kiln.errors import KilnError
from kiln.settings import Settings

FORMAT, FORMAT_VERSION, MANIFEST = "kiln-backup", 1, "manifest.json"
SQLITE_MEMBER, PG_MEMBER = "database/kiln.sqlite", "database/kiln.pgdump"
EFFECTIVE_SETTINGS, KEY_MEMBER = "settings/effective.json", "secret.key.enc"
KEY_CHECK_MESSAGE, SCRYPT_N, SCRYPT_R, SCRYPT_P = b"kiln backup secret key check v1", 2**15, 8, 1


class BackupError(KilnError):
    """A backup or restore that was refused; the message says why and what to do."""

    status, title = 400, "Backup refused"


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (`manifest.json`)."""

    kiln_version: str
    schema_revision: str
    database: str  # sqlite | postgresql
    created_at: str
    members: dict[str, str]  # archive name -> SHA-256
    secret_key_check: str | None
    secret_key: str  # "encrypted" | "not included"
    settings_file: str | None

    def to_json(self) -> str:
        """The manifest as written into the archive."""
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}, indent=2)


def database_member(kind: str) -> str:
    """The archive member that holds a `sqlite` or `postgresql` database's dump."""
    return SQLITE_MEMBER if kind == "sqlite" else PG_MEMBER


def key_check(secret_key: str) -> str:
    """An HMAC of a fixed message under the key: equal checks mean equal keys; reveals nothing."""
    return hmac.new(secret_key.encode(), KEY_CHECK_MESSAGE, hashlib.sha256).hexdigest()


def _passphrase_fernet(passphrase: str, salt: bytes) -> Fernet:
    if len(passphrase) < 12:
        raise BackupError("the backup passphrase must be at least 12 characters")
    key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret_key(secret_key: str, passphrase: str) -> bytes:
    """The `secret.key.enc` member: the key encrypted under a passphrase-derived key."""
    salt = os.urandom(16)
    token = _passphrase_fernet(passphrase, salt).encrypt(secret_key.encode())
    return json.dumps({"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                       "salt": base64.b64encode(salt).decode(), "token": token.decode()}).encode()


def decrypt_secret_key(blob: bytes, passphrase: str) -> str:
    """The secret key from a `secret.key.enc` member; BackupError for a wrong passphrase."""
    data = json.loads(blob)
    try:
        return _passphrase_fernet(passphrase, base64.b64decode(data["salt"])).decrypt(data["token"].encode()).decode()
    except InvalidToken:
        raise BackupError("wrong backup passphrase: the secret key in the backup cannot be decrypted") from None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's contents."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_private(path: Path, content: bytes) -> Path:
    """Write a file only its owner can read (mode 0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(content)
    return path


def settings_file_without_secret(path: Path) -> bytes:
    """The config file's text without its `secret_key` entry and with URL passwords masked
    (config files are flat: one setting a line)."""
    lines = path.read_text().splitlines(keepends=True)
    kept = "".join(line for line in lines if not re.match(r"\s*secret_key\s*[=:]", line))
    return re.sub(r"(://[^:/@\s\"']+:)[^@\s\"']+@", r"\1***@", kept).encode()


def effective_settings(settings: Settings) -> bytes:
    """Every setting as JSON, without the secret key and with the database password masked."""
    values = settings.model_dump(mode="json", exclude={"secret_key"})
    if settings.database_url:
        values["database_url"] = make_url(settings.database_url).render_as_string(hide_password=True)
    return json.dumps(values, indent=2, sort_keys=True).encode()


def write_archive(out: Path, manifest: Manifest, files: dict[str, Path], workdir: Path) -> None:
    """Write the manifest and `files` (archive name -> file) as a `.tar.gz` at `out`: built in
    `workdir` (mode 0600) and moved into place in one step."""
    members = {MANIFEST: write_private(workdir / MANIFEST, manifest.to_json().encode()), **files}
    partial = write_private(workdir / "backup.tar.gz", b"")
    with tarfile.open(partial, mode="w:gz") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name, recursive=False)
    os.replace(partial, out)


def read_backup(archive: Path, workdir: Path) -> tuple[Manifest, dict[str, Path]]:
    """Open and verify a backup: a Kiln manifest, every listed member present with its checksum.
    Members are extracted (by their listed names only) into `workdir`."""
    name = str(archive)
    if not archive.is_file():
        raise BackupError(f"{name}: no such backup file")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            if MANIFEST not in tar.getnames():
                raise BackupError(f"{name} is not a Kiln backup (no {MANIFEST})")
            data = json.loads(tar.extractfile(MANIFEST).read())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise BackupError(f"{name} is not a Kiln backup (its manifest is not a {FORMAT} manifest)")
            if data.get("format_version") != FORMAT_VERSION:
                raise BackupError(f"{name} has backup format {data.get('format_version')!r}; "
                                  f"this Kiln reads format {FORMAT_VERSION}")
            data.pop("format"), data.pop("format_version")
            manifest = Manifest(**data)
            paths = {}
            for member_name, checksum in manifest.members.items():
                if member_name not in tar.getnames():
                    raise BackupError(f"{name} is incomplete: {member_name} is missing")
                path = workdir / member_name.replace("/", "_")
                with path.open("wb") as handle:
                    shutil.copyfileobj(tar.extractfile(member_name), handle, 1 << 20)
                if sha256_of(path) != checksum:
                    raise BackupError(f"{name} is corrupt: {member_name} does not match its checksum")
                paths[member_name] = path
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BackupError(f"{name} is not a readable Kiln backup ({type(exc).__name__}: {exc})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BackupError(f"{name} is not a Kiln backup (bad manifest: {exc})") from None
    if database_member(manifest.database) not in paths:
        raise BackupError(f"{name} is incomplete: it holds no {manifest.database} database")
    return manifest, paths
