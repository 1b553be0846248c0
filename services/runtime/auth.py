"""Access tokens: Ed25519-signed JWTs issued by the gateway and verified by every service.

Asymmetric keys keep the power to mint tokens in one process (the gateway); services hold only
public keys. Each key's id (`kid`) is a thumbprint of its public key, so a verifier can hold the
old and the new key while keys rotate.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.runtime.errors import AuthError, ConfigError, TokenExpired

ALGORITHM = "EdDSA"

#: The scope WorkerService requires. Only worker tokens carry it: a client's `*` scope does
#: not include it, since a worker sees every tenant's jobs.
WORKER_SCOPE = "jobs.worker"
#: The tenant named in worker tokens; workers act for each job's own tenant, never this one.
WORKER_TENANT = "_workers"
#: Worker tokens live long (they are re-read from their file as they near expiry).
WORKER_TOKEN_TTL_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API client acting inside one tenant."""

    tenant: str
    """Every resource the call reads or changes belongs to this tenant."""
    client_id: str
    """The API client the token was issued to."""
    scopes: frozenset[str]
    """Scopes granted to the token."""

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "*" in self.scopes

    @property
    def is_worker(self) -> bool:
        """A worker token: granted explicitly, never through `*`."""
        return WORKER_SCOPE in self.scopes


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Writes a new Ed25519 key pair (private key 0600); used by the launcher and tests."""
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.touch(mode=0o600, exist_ok=True)
    private_path.write_bytes(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def ensure_keypair(private_path: Path, public_path: Path) -> None:
    """Creates the key pair once; an existing pair is kept so issued tokens stay valid."""
    if not private_path.exists():
        generate_keypair(private_path, public_path)


class TokenSigner:
    """Issues access tokens. Only the gateway holds one."""

    def __init__(self, private_key: Ed25519PrivateKey, *, issuer: str, ttl_seconds: int) -> None:
        self._key = private_key
        self._kid = key_id(private_key.public_key())
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_file(cls, path: str | Path, *, issuer: str, ttl_seconds: int) -> TokenSigner:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the JWT private key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key, issuer=issuer, ttl_seconds=ttl_seconds)

    def issue(
        self,
        *,
        client_id: str,
        tenant: str,
        scopes: Iterable[str],
        ttl_seconds: int | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """Answers (token, expires_in seconds)."""
        issued_at = int(time.time() if now is None else now)
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        claims = {
            "iss": self.issuer,
            "sub": client_id,
            "tenant": tenant,
            "scope": " ".join(sorted(scopes)),
            "iat": issued_at,
            "exp": issued_at + ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return token, ttl


def write_worker_token(
    signer: TokenSigner,
    path: Path,
    *,
    worker_id: str = "kiln-worker",
    ttl_seconds: int | None = None,
) -> str:
    """Mints a worker token into `path` (0600) and answers it; the launcher and tests use it,
    operators put the same into a Secret."""
    token, _ = signer.issue(
        client_id=worker_id,
        tenant=WORKER_TENANT,
        scopes=[WORKER_SCOPE],
        ttl_seconds=WORKER_TOKEN_TTL_SECONDS if ttl_seconds is None else ttl_seconds,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(token + "\n")
    return token


class TokenVerifier:
    """Checks signature, issuer and expiry; every service holds one."""

    #: Verified tokens remembered, so a client reusing its token (the common case: tokens
    #: live for hours) costs a dictionary lookup instead of a signature check per call.
    CACHE_SIZE = 4096

    def __init__(self, public_keys: Sequence[Ed25519PublicKey], *, issuer: str) -> None:
        if not public_keys:
            raise ConfigError("no JWT public key configured (KILN_JWT_PUBLIC_KEY_FILES)")
        self._keys = {key_id(k): k for k in public_keys}
        self.issuer = issuer
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    @classmethod
    def from_files(cls, paths: str, *, issuer: str) -> TokenVerifier:
        keys: list[Ed25519PublicKey] = []
        for raw in paths.split(","):
            path = raw.strip()
            if not path:
                continue
            try:
                key = serialization.load_pem_public_key(Path(path).read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the JWT public key {path}: {exc}") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"{path} is not an Ed25519 public key")
            keys.append(key)
        return cls(keys, issuer=issuer)

    def verify(self, token: str) -> Principal:
        """The token's principal; raises TokenExpired or AuthError."""
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires_at = cached
            if time.time() < expires_at:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
            raise TokenExpired("token expired")
        principal, expires_at = self._verify_signature(token)
        self._verified[token] = (principal, expires_at)
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _verify_signature(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from exc
        key = self._keys.get(str(header.get("kid", "")))
        if key is None or header.get("alg") != ALGORITHM:
            raise AuthError("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not tenant:
            raise AuthError("token carries no tenant")
        scope = claims.get("scope", "")
        principal = Principal(
            tenant=tenant,
            client_id=str(claims["sub"]),
            scopes=frozenset(str(scope).split()),
        )
        return principal, float(claims["exp"])
