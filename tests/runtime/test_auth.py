"""Tokens: signature, issuer, expiry, tampering, key rotation."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from services.runtime.auth import TokenSigner, TokenVerifier, generate_keypair
from services.runtime.errors import AuthError, ConfigError, TokenExpired


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    return private, public


def signer_for(private: Path, issuer: str = "kiln") -> TokenSigner:
    return TokenSigner.from_file(private, issuer=issuer, ttl_seconds=60)


def test_round_trip_carries_tenant_client_and_scopes(keypair: tuple[Path, Path]) -> None:
    token, expires_in = signer_for(keypair[0]).issue(
        client_id="c1", tenant="acme", scopes=["assets.read", "jobs"]
    )
    assert expires_in == 60
    principal = TokenVerifier.from_files(str(keypair[1]), issuer="kiln").verify(token)
    assert (principal.tenant, principal.client_id) == ("acme", "c1")
    assert principal.scopes == {"assets.read", "jobs"}
    assert principal.has_scope("jobs") and not principal.has_scope("admin")


def test_private_key_file_is_private(keypair: tuple[Path, Path]) -> None:
    assert keypair[0].stat().st_mode & 0o077 == 0


def _tamper(token: str, **claims: object) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def test_tampered_claims_are_refused(keypair: tuple[Path, Path]) -> None:
    token, _ = signer_for(keypair[0]).issue(client_id="c1", tenant="acme", scopes=[])
    verifier = TokenVerifier.from_files(str(keypair[1]), issuer="kiln")
    with pytest.raises(AuthError):
        verifier.verify(_tamper(token, tenant="victim"))


def test_expired_token_is_told_apart(keypair: tuple[Path, Path]) -> None:
    token, _ = signer_for(keypair[0]).issue(
        client_id="c1", tenant="acme", scopes=[], now=time.time() - 120
    )
    with pytest.raises(TokenExpired):
        TokenVerifier.from_files(str(keypair[1]), issuer="kiln").verify(token)


def test_foreign_key_issuer_and_alg_none_are_refused(
    keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    verifier = TokenVerifier.from_files(str(keypair[1]), issuer="kiln")
    other_private, _ = tmp_path / "o.pem", tmp_path / "o.pub.pem"
    generate_keypair(other_private, tmp_path / "o.pub.pem")
    foreign, _ = signer_for(other_private).issue(client_id="c", tenant="t", scopes=[])
    wrong_issuer, _ = signer_for(keypair[0], issuer="evil").issue(
        client_id="c", tenant="t", scopes=[]
    )
    unsigned = jwt.encode(
        {"iss": "kiln", "sub": "c", "tenant": "t", "iat": 0, "exp": 2**31},
        key=None,
        algorithm="none",
    )
    for token in (foreign, wrong_issuer, unsigned, "not-a-jwt", ""):
        with pytest.raises(AuthError):
            verifier.verify(token)


def test_rotation_accepts_old_and_new_keys(keypair: tuple[Path, Path], tmp_path: Path) -> None:
    new_private, new_public = tmp_path / "n.pem", tmp_path / "n.pub.pem"
    generate_keypair(new_private, new_public)
    verifier = TokenVerifier.from_files(f"{keypair[1]}, {new_public}", issuer="kiln")
    for private in (keypair[0], new_private):
        token, _ = signer_for(private).issue(client_id="c", tenant="t", scopes=[])
        assert verifier.verify(token).tenant == "t"


def test_missing_or_wrong_key_files_fail_at_start(
    tmp_path: Path, keypair: tuple[Path, Path]
) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        TokenVerifier.from_files(str(tmp_path / "absent.pem"), issuer="kiln")
    with pytest.raises(ConfigError, match="no JWT public key"):
        TokenVerifier.from_files("", issuer="kiln")
    with pytest.raises(ConfigError):
        TokenSigner.from_file(keypair[1], issuer="kiln", ttl_seconds=1)


def test_a_remembered_token_still_expires(keypair: tuple[Path, Path]) -> None:
    verifier = TokenVerifier.from_files(str(keypair[1]), issuer="kiln")
    token, _ = signer_for(keypair[0]).issue(
        client_id="c", tenant="t", scopes=[], ttl_seconds=2, now=time.time() - 1
    )
    assert verifier.verify(token).tenant == "t"  # checked and remembered
    assert verifier.verify(token).tenant == "t"  # answered from memory
    time.sleep(1.2)
    with pytest.raises(TokenExpired):
        verifier.verify(token)


def test_the_memory_of_verified_tokens_is_bounded(keypair: tuple[Path, Path]) -> None:
    verifier = TokenVerifier.from_files(str(keypair[1]), issuer="kiln")
    verifier.CACHE_SIZE = 3
    signer = signer_for(keypair[0])
    tokens = [signer.issue(client_id=f"c{i}", tenant="t", scopes=[])[0] for i in range(5)]
    for token in tokens:
        verifier.verify(token)
    assert len(verifier._verified) == 3
    # A forgotten token is checked again from its signature, and still passes.
    assert verifier.verify(tokens[0]).client_id == "c0"
