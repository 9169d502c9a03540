"""Known-answer tests for protocol.md5 (PostgreSQL MD5 password authentication)."""

from __future__ import annotations

import pytest

from protocol.md5 import is_md5_hash, md5_password_hash, md5_response, md5_verify

# md5("secretpostgres"), written out (not computed by the test).
POSTGRES_SECRET = "md553f48b7c4b76a86ce72276c5755f217d"
SALT = b"\x01\x02\x03\x04"
# md5("53f48b7c4b76a86ce72276c5755f217d" + b"\x01\x02\x03\x04")
POSTGRES_SECRET_RESPONSE = "md5bb41a296aab6baccb36ff243a562abff"
# What PostgreSQL 15 stored for CREATE ROLE postgres2 PASSWORD 'secret' (md5 encryption).
PG_POSTGRES2_SECRET = "md5a99489f2ba8d41137689bf5947f835e0"
SCRAM_SECRET = (
    "SCRAM-SHA-256$4096:b6ffPeO8zD7/f0ZM3j1Cng==$artJkqFoZ5MP78JWnHufIKVqYr9sHcBgHazd5dv23aE="
    ":HAqVjVjCjCsbuhNpGhIO6aaNbOKs3wwq9X0CxbVWJZ0="
)


def test_password_hash() -> None:
    assert md5_password_hash("postgres", "secret") == POSTGRES_SECRET
    assert md5_password_hash("postgres2", "secret") == PG_POSTGRES2_SECRET


def test_response_from_password_and_from_hash() -> None:
    assert md5_response("postgres", "secret", SALT) == POSTGRES_SECRET_RESPONSE
    assert md5_response("postgres", POSTGRES_SECRET, SALT) == POSTGRES_SECRET_RESPONSE
    assert md5_response("postgres", "secret", b"\x00\x00\x00\x00") != POSTGRES_SECRET_RESPONSE


def test_verify_against_plaintext_and_hash() -> None:
    assert md5_verify("secret", "postgres", SALT, POSTGRES_SECRET_RESPONSE)
    assert md5_verify(POSTGRES_SECRET, "postgres", SALT, POSTGRES_SECRET_RESPONSE)


@pytest.mark.parametrize(
    ("stored", "user", "salt", "response"),
    [
        ("wrong", "postgres", SALT, POSTGRES_SECRET_RESPONSE),
        ("secret", "someone", SALT, POSTGRES_SECRET_RESPONSE),
        ("secret", "postgres", b"\x04\x03\x02\x01", POSTGRES_SECRET_RESPONSE),
        ("secret", "postgres", SALT, POSTGRES_SECRET_RESPONSE.upper()),
        ("secret", "postgres", SALT, ""),
        ("secret", "postgres", SALT, "\udcff"),
        (SCRAM_SECRET, "postgres", SALT, POSTGRES_SECRET_RESPONSE),
    ],
)
def test_verify_rejects(stored: str, user: str, salt: bytes, response: str) -> None:
    assert not md5_verify(stored, user, salt, response)


def test_hash_detection_follows_postgres() -> None:
    assert is_md5_hash(POSTGRES_SECRET)
    assert not is_md5_hash("md5" + POSTGRES_SECRET[3:].upper())  # a plaintext password
    assert not is_md5_hash(POSTGRES_SECRET[:-1])
    assert not is_md5_hash("md5" + "g" * 32)


def test_salt_must_be_four_bytes() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        md5_response("postgres", "secret", b"\x01\x02\x03")
