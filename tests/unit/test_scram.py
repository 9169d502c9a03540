"""Tests for protocol.scram: RFC 7677 vector, PostgreSQL verifiers, both sides talking."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from protocol.scram import (
    SCRAM_SHA_256,
    ScramClient,
    ScramError,
    ScramServer,
    ScramVerifier,
    saslprep,
)

# RFC 7677, section 3 (user "user", password "pencil").
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# Stored by PostgreSQL 15 (password_encryption = scram-sha-256) for these passwords.
PG_VERIFIERS = {
    "pencil": "SCRAM-SHA-256$4096:b6ffPeO8zD7/f0ZM3j1Cng==$"
    "artJkqFoZ5MP78JWnHufIKVqYr9sHcBgHazd5dv23aE=:HAqVjVjCjCsbuhNpGhIO6aaNbOKs3wwq9X0CxbVWJZ0=",
    # soft hyphen (mapped to nothing), no-break space (to " "), "ﬁ" ligature (NFKC "fi")
    "I\u00adX\u00a0\ufb01": "SCRAM-SHA-256$4096:E9Tn5QJwlIdKEjj3YYjHgA==$"
    "6ChjEATThsyizNCiQGFGtVdw0SelAsKHTZy1lxV9/kU=:F7u50+XZJMaqnF/llUKMLrIsjKI2zaNAFswMq1+r4iE=",
    # RandALCat first but not last: bidi check fails, raw bytes used
    "\u0627\u0031": "SCRAM-SHA-256$4096:TGbf3CiK3mssV3knHJcNUQ==$"
    "xAA0jZA23VxshC0TMuuChXsLPTuB7Bak9O3QxydoZHo=:ES+pABX3vjCSoGiipR1dPfh85DFnYeIymKd2q3QcvmI=",
    # non-ASCII with a prohibited control character: raw bytes used
    "caf\u00e9\u0007": "SCRAM-SHA-256$4096:l7ZvDzutkMTMPWnw4Y1xew==$"
    "btEBclwF3ZDPBOs5oVF+PnR4Eq7WIl1THXpEmzHpm2M=:9xvvotfLtIuTCHLXSuAP4flbfR58mq3r9/tqd9an7Do=",
}


def rfc_verifier() -> ScramVerifier:
    return ScramVerifier.from_password("pencil", salt=RFC_SALT, iterations=4096)


def exchange(server: ScramServer, client: ScramClient) -> None:
    server_first = server.handle_client_first(client.client_first())
    client_final = client.handle_server_first(server_first)
    client.verify_server_final(server.handle_client_final(client_final))


# --- RFC 7677 ----------------------------------------------------------------------------


def test_rfc7677_server_side() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.authenticated
    assert len(server.client_key) == 32


def test_rfc7677_client_side() -> None:
    client = ScramClient(password="pencil", nonce=RFC_CLIENT_NONCE, username="user")
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_rfc7677_client_side_in_pass_through_mode() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    server.handle_client_final(RFC_CLIENT_FINAL)
    client = ScramClient(
        client_key=server.client_key,
        server_key=server.server_key,
        nonce=RFC_CLIENT_NONCE,
        username="user",
    )
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


# --- verifiers ---------------------------------------------------------------------------


@pytest.mark.parametrize("password", list(PG_VERIFIERS), ids=ascii)
def test_from_password_matches_postgres(password: str) -> None:
    stored = ScramVerifier.parse(PG_VERIFIERS[password])
    mine = ScramVerifier.from_password(password, salt=stored.salt, iterations=stored.iterations)
    assert mine == stored
    assert str(mine) == PG_VERIFIERS[password]


@pytest.mark.parametrize("text", list(PG_VERIFIERS.values()))
def test_parse_str_round_trip(text: str) -> None:
    verifier = ScramVerifier.parse(text)
    assert verifier.iterations == 4096
    assert len(verifier.salt) == 16
    assert str(verifier) == text
    assert ScramVerifier.is_verifier(text)


def test_from_password_defaults() -> None:
    a = ScramVerifier.from_password("pencil")
    b = ScramVerifier.from_password("pencil")
    assert a.iterations == 4096
    assert len(a.salt) == 16
    assert a.salt != b.salt
    assert ScramVerifier.parse(str(a)) == a
    assert "stored_key" not in repr(a)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "pencil",
        "md553f48b7c4b76a86ce72276c5755f217d",
        "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$\u0664:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 40 + ":" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:not base64!$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$" + "A" * 43 + "=:" + "A" * 43 + "=$x",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ScramVerifier.parse(text)
    assert not ScramVerifier.is_verifier(text)


def test_saslprep() -> None:
    assert saslprep("pencil") == b"pencil"
    assert saslprep("a\x07b") == b"a\x07b"  # pure ASCII is used as it is, like PostgreSQL
    assert saslprep("I\u00adX") == b"IX"
    assert saslprep("\u2168") == b"IX"  # ROMAN NUMERAL NINE, NFKC
    assert saslprep("a\u00a0b") == b"a b"
    assert saslprep("\u00ad") == "\u00ad".encode()  # nothing left: raw bytes
    assert saslprep("\udcff\u00e9") == b"\xff\xc3\xa9"  # not valid UTF-8: raw bytes


# --- client and server together --------------------------------------------------------


def test_password_exchange() -> None:
    server = ScramServer(ScramVerifier.from_password("correct horse"))
    exchange(server, ScramClient(password="correct horse"))
    assert server.authenticated


def test_exchange_with_verifier_stored_by_postgres() -> None:
    password = "I\u00adX\u00a0\ufb01"
    server = ScramServer(ScramVerifier.parse(PG_VERIFIERS[password]))
    exchange(server, ScramClient(password="IX fi"))  # the SASLprep'd form is equivalent


def test_pass_through_exchange() -> None:
    verifier = ScramVerifier.from_password("s3cret")
    front = ScramServer(verifier)
    exchange(front, ScramClient(password="s3cret"))
    # The proxy logs in to a server holding the same verifier, without the password.
    back = ScramServer(verifier)
    exchange(back, ScramClient(client_key=front.client_key, server_key=front.server_key))
    assert back.authenticated
    assert back.client_key == front.client_key


def test_wrong_password_fails_at_proof() -> None:
    server = ScramServer(ScramVerifier.from_password("right"))
    client = ScramClient(password="wrong")
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)
    assert not server.authenticated
    with pytest.raises(ScramError, match="not succeeded"):
        _ = server.client_key


def test_pass_through_with_wrong_keys_fails() -> None:
    server = ScramServer(ScramVerifier.from_password("right"))
    other = ScramVerifier.from_password("other")
    client = ScramClient(client_key=b"\x00" * 32, server_key=other.server_key)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)


def test_unknown_user_runs_full_exchange_and_fails_at_proof() -> None:
    server = ScramServer(None, username="ghost")
    client = ScramClient(password="anything")
    server_first = server.handle_client_first(client.client_first())
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    assert len(base64.b64decode(attrs["s"])) == 16
    assert attrs["i"] == "4096"
    client_final = client.handle_server_first(server_first)
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)


def test_unknown_user_salt_is_stable_per_name() -> None:
    def salt(name: str) -> bytes:
        server_first = ScramServer(None, username=name).handle_client_first(b"n,,n=,r=abc")
        return base64.b64decode(server_first.split(b",s=")[1].split(b",")[0])

    assert salt("ghost") == salt("ghost")
    assert salt("ghost") != salt("phantom")


def test_server_nonce_is_random_and_prefixed_by_client_nonce() -> None:
    firsts = [ScramServer(None).handle_client_first(b"n,,n=,r=abc") for _ in range(2)]
    assert all(f.startswith(b"r=abc") for f in firsts)
    assert firsts[0] != firsts[1]


def proof_by_hand(password: bytes, server_first: bytes, auth_message: bytes) -> bytes:
    """ClientProof straight from RFC 5802's formulas, independent of protocol.scram."""
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salt = base64.b64decode(attrs[b"s"] + b"=" * (-len(attrs[b"s"]) % 4))
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, int(attrs[b"i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    return base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))


def test_y_flag_accepted_with_matching_binding() -> None:
    server = ScramServer(ScramVerifier.from_password("pw"))
    server_first = server.handle_client_first(b"y,,n=,r=abc")
    nonce = server_first.split(b",")[0][2:]
    without_proof = b"c=eSws,r=" + nonce  # base64("y,,")
    auth_message = b"n=,r=abc," + server_first + b"," + without_proof
    proof = proof_by_hand(b"pw", server_first, auth_message)
    assert server.handle_client_final(without_proof + b",p=" + proof).startswith(b"v=")
    assert server.authenticated


def test_y_flag_with_binding_of_n_flag_is_rejected() -> None:
    server = ScramServer(ScramVerifier.from_password("pw"))
    client = ScramClient(password="pw")
    first = b"y" + client.client_first()[1:]
    client_final = client.handle_server_first(server.handle_client_first(first))
    assert client_final.startswith(b"c=biws,")
    with pytest.raises(ScramError, match="channel-binding"):
        server.handle_client_final(client_final)


# --- malformed and out-of-order messages --------------------------------------------------


@pytest.mark.parametrize(
    ("client_first", "problem"),
    [
        (b"p=tls-server-end-point,,n=,r=abc", "channel binding"),
        (b"x,,n=,r=abc", "channel-binding flag"),
        (b"", "channel-binding flag"),
        (b"n,a=admin,n=,r=abc", "authorization identity"),
        (b"n,x,n=,r=abc", "gs2 header"),
        (b"n,,m=ext,n=,r=abc", "extension"),
        (b"n,,n=", "attribute 'r'"),
        (b"n,,n=,x=abc", "attribute 'r'"),
        (b"n,,x=,r=abc", "attribute 'n'"),
        (b"n,,n=,r=", "invalid nonce"),
        (b"n,,n=,r=a\x7fb", "invalid nonce"),
        (b"n,,n=,r=\xff", "UTF-8"),
    ],
)
def test_bad_client_first(client_first: bytes, problem: str) -> None:
    with pytest.raises(ScramError, match=problem):
        ScramServer(rfc_verifier()).handle_client_first(client_first)


@pytest.mark.parametrize(
    ("client_final", "problem"),
    [
        (RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"), "channel-binding"),
        (RFC_CLIENT_FINAL.replace(b"c=biws", b"c=***"), "base64"),
        (RFC_CLIENT_FINAL.replace(b"c=biws", b"x=biws"), "attribute 'c'"),
        (RFC_CLIENT_FINAL.replace(b"k0,p=", b"k1,p="), "nonce does not match"),
        (RFC_CLIENT_FINAL.replace(b"r=", b"x="), "attribute 'r'"),
        (RFC_CLIENT_FINAL.replace(b",p=", b",x="), "attribute 'p'"),
        (RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=dHzc"), "password authentication failed"),
        (RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=dH*b"), "base64"),
        (RFC_CLIENT_FINAL.split(b",p=")[0] + b",p=AAAA", "wrong length"),
        (b"c=biws,p=AAAA", "attribute 'r'"),
    ],
)
def test_bad_client_final(client_final: bytes, problem: str) -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError, match=problem):
        server.handle_client_final(client_final)
    assert not server.authenticated


def test_client_final_with_extension_before_proof_is_verified() -> None:
    # Extensions are covered by the proof, so an unexpected one fails verification.
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(RFC_CLIENT_FINAL.replace(b",p=", b",x=y,p="))


def test_server_steps_out_of_order() -> None:
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    with pytest.raises(ScramError, match="state 'client-first'"):
        server.handle_client_final(RFC_CLIENT_FINAL)
    server = ScramServer(rfc_verifier(), nonce=RFC_SERVER_NONCE)
    server.handle_client_first(RFC_CLIENT_FIRST)
    server.handle_client_final(RFC_CLIENT_FINAL)
    with pytest.raises(ScramError, match="state 'done'"):
        server.handle_client_first(RFC_CLIENT_FIRST)
    server = ScramServer(rfc_verifier())
    with pytest.raises(ScramError):
        server.handle_client_first(b"garbage")
    with pytest.raises(ScramError, match="state 'failed'"):
        server.handle_client_first(RFC_CLIENT_FIRST)


def rfc_client() -> ScramClient:
    client = ScramClient(password="pencil", nonce=RFC_CLIENT_NONCE, username="user")
    client.client_first()
    return client


@pytest.mark.parametrize(
    ("server_first", "problem"),
    [
        (RFC_SERVER_FIRST.replace(b"r=rOpr", b"r=xOpr"), "nonce mismatch"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce mismatch"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=0"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"i=4096", b"i=-1"), "iteration count"),
        (RFC_SERVER_FIRST.replace(b"s=W22Z", b"s=*22Z"), "base64"),
        (RFC_SERVER_FIRST.replace(b",i=4096", b""), "expected attributes"),
        (b"m=ext," + RFC_SERVER_FIRST, "extension"),
        (b"e=other-error", "expected attributes"),
        (b"e=x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "attribute 'r'"),
    ],
)
def test_client_rejects_bad_server_first(server_first: bytes, problem: str) -> None:
    with pytest.raises(ScramError, match=problem):
        rfc_client().handle_server_first(server_first)


@pytest.mark.parametrize(
    ("server_final", "problem"),
    [
        (b"e=invalid-proof", "server rejected SCRAM authentication: invalid-proof"),
        (RFC_SERVER_FINAL.replace(b"v=6rri", b"v=7rri"), "invalid server signature"),
        (b"v=", "invalid server signature"),
        (b"x=abc", "attribute 'v'"),
        (b"v=!!", "base64"),
    ],
)
def test_client_rejects_bad_server_final(server_final: bytes, problem: str) -> None:
    client = rfc_client()
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(ScramError, match=problem):
        client.verify_server_final(server_final)


def test_client_accepts_server_final_extensions() -> None:
    client = rfc_client()
    client.handle_server_first(RFC_SERVER_FIRST)
    client.verify_server_final(RFC_SERVER_FINAL + b",ext=1")


def test_client_steps_out_of_order() -> None:
    client = ScramClient(password="pencil")
    with pytest.raises(ScramError, match="state 'start'"):
        client.handle_server_first(RFC_SERVER_FIRST)
    client.client_first()
    with pytest.raises(ScramError, match="state 'server-first'"):
        client.client_first()


def test_client_default_first_message_matches_libpq() -> None:
    first = ScramClient(password="x").client_first()
    assert first.startswith(b"n,,n=,r=")
    assert len(base64.b64decode(first[len(b"n,,n=,r=") :])) == 18


def test_client_escapes_username() -> None:
    first = ScramClient(password="x", nonce="abc", username="a=b,c").client_first()
    assert first == b"n,,n=a=3Db=2Cc,r=abc"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"password": "x", "client_key": b"k" * 32, "server_key": b"s" * 32},
        {"client_key": b"k" * 32},
        {"server_key": b"s" * 32},
        {"password": "x", "client_key": b"k" * 32},
    ],
)
def test_client_needs_password_or_both_keys(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="password or both"):
        ScramClient(**kwargs)  # type: ignore[arg-type]


def test_mechanism_name() -> None:
    assert SCRAM_SHA_256 == "SCRAM-SHA-256"
