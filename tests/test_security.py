"""Password hashing, token material and encryption of secrets at rest."""

from __future__ import annotations

import pytest

from kiln.security import SecretBox, hash_password, new_api_token, token_digest, verify_password


def test_password_hash_is_argon2id_and_verifies() -> None:
    hashed = hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$") and "correct" not in hashed
    assert verify_password(hashed, "correct horse battery")
    assert not verify_password(hashed, "wrong horse battery")
    assert not verify_password(None, "anything at all")
    assert not verify_password("not-a-hash", "anything at all")


def test_tokens_are_random_and_stored_as_digests() -> None:
    one, two = new_api_token(), new_api_token()
    assert one != two and one.startswith("kiln_") and len(one) == 48
    assert token_digest(one) != token_digest(two) and len(token_digest(one)) == 64 and one not in token_digest(one)


def test_secret_box_round_trip_and_wrong_key() -> None:
    box = SecretBox("a" * 40)
    ciphertext = box.encrypt("bmc-password")
    assert "bmc-password" not in ciphertext
    assert box.decrypt(ciphertext) == "bmc-password"
    with pytest.raises(ValueError, match="wrong KILN_SECRET_KEY"):
        SecretBox("b" * 40).decrypt(ciphertext)
