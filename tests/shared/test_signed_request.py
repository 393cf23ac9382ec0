"""Management requests signed by a management key, for one audience, used once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.keys import generate_private_key
from shared.signed_request import (
    ReplayGuard,
    SignedRequestError,
    SignedRequestVerifier,
    authorization,
    open_answer,
    sign_answer,
)

PATH = "/internal/usage/ack?x=1"
BODY = b'{"ids":[1]}'


def verifier_for(key, audience: str = "node-1", replay: ReplayGuard | None = None):
    return SignedRequestVerifier(lambda: [key.public_key()], audience, replay or ReplayGuard())


def test_signed_request_binds_method_path_body_and_audience() -> None:
    key = generate_private_key()
    verifier = verifier_for(key)
    header, jti = authorization(key, "POST", PATH, BODY, audience="node-1")
    assert verifier.verify(header, "POST", PATH, BODY)["jti"] == jti
    with pytest.raises(SignedRequestError, match="replayed"):
        verifier.verify(header, "POST", PATH, BODY)
    for method, path, body in [
        ("GET", PATH, BODY),
        ("POST", "/internal/usage/ack?x=2", BODY),
        ("POST", PATH, b'{"ids":[2]}'),
    ]:
        fresh, _ = authorization(key, "POST", PATH, BODY, audience="node-1")
        with pytest.raises(SignedRequestError, match=r"another request|body"):
            verifier.verify(fresh, method, path, body)
    elsewhere, _ = authorization(key, "POST", PATH, BODY, audience="node-2")
    with pytest.raises(SignedRequestError, match="another node"):
        verifier.verify(elsewhere, "POST", PATH, BODY)


def test_other_key_and_missing_header_are_refused() -> None:
    verifier = verifier_for(generate_private_key())
    with pytest.raises(SignedRequestError, match="missing"):
        verifier.verify(None, "GET", "/", b"")
    header, _ = authorization(generate_private_key(), "GET", "/", b"", audience="node-1")
    with pytest.raises(SignedRequestError, match="untrusted"):
        verifier.verify(header, "GET", "/", b"")


def test_seen_ids_survive_a_new_verifier_on_the_same_file(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "replay.log"
    header, _ = authorization(key, "GET", "/x", b"", audience="node-1")
    verifier_for(key, replay=ReplayGuard(path)).verify(header, "GET", "/x", b"")
    after_restart = verifier_for(key, replay=ReplayGuard(path))
    with pytest.raises(SignedRequestError, match="replayed"):
        after_restart.verify(header, "GET", "/x", b"")


def test_the_replay_file_forgets_expired_ids_and_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "replay.log"
    guard = ReplayGuard(path)
    now = time.time()
    assert guard.first_use("a" * 32, now - 1)  # already past its window
    for i in range(3000):
        assert guard.first_use(f"{i:032d}", now + 600)
    assert not guard.first_use("0" * 32, now + 600)
    reopened = ReplayGuard(path)
    assert reopened.first_use("a" * 32, now + 600)  # expired: forgotten
    assert not reopened.first_use(f"{2999:032d}", now + 600)
    assert len(path.read_text().splitlines()) < 2 * 3001


def test_a_signed_answer_is_bound_to_the_request() -> None:
    node = generate_private_key()
    token = sign_answer({"status": "ok"}, node, nonce="n" * 32, audience="control-plane")
    answer = open_answer(token, node.public_key(), nonce="n" * 32, audience="control-plane")
    assert answer["status"] == "ok"
    with pytest.raises(SignedRequestError, match="not for this request"):
        open_answer(token, node.public_key(), nonce="m" * 32, audience="control-plane")
    with pytest.raises(SignedRequestError, match="untrusted"):
        open_answer(
            token, generate_private_key().public_key(), nonce="n" * 32, audience="control-plane"
        )


def test_a_damaged_replay_file_keeps_its_good_lines_and_an_unreadable_one_refuses(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replay.log"
    guard = ReplayGuard(path)
    until = time.time() + 600
    assert guard.first_use("a" * 32, until)
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe garbage\n")  # a torn write, a bad byte
    assert guard.first_use("b" * 32, until)
    reopened = ReplayGuard(path)
    assert not reopened.first_use("a" * 32, until)
    assert not reopened.first_use("b" * 32, until)
    unreadable = tmp_path / "dir-not-file"
    unreadable.mkdir()
    blind = ReplayGuard(unreadable)  # can't read it: ids seen before are unknown
    assert not blind.first_use("c" * 32, until)
