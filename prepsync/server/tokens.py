"""Bearer tokens for the client-credentials flow (REFERENCE §7).

A token is ``<payload>.<signature>``, both unpadded base64url: the payload is the JSON
``{"sub": client id, "exp": unix seconds}``, the signature the HMAC-SHA256, under a random
32-byte key, of the payload and the client's ``HashedSecret`` when the token was issued. The key
is created once in the data directory (mode 0600) and read at every start, so tokens outlive a
restart and nothing about them is stored per token. A token is valid while ``exp`` is in the
future and its client is still in the configuration with the same ``HashedSecret``.

Revocation: a token dies with the secret it was issued for. Changing a client's
``HashedSecret`` (and restarting the server, which reads its configuration at start) ends every
token of that client at once, since its signature no longer verifies; deleting ``token.key``
and restarting ends every token of every client. The secret itself is not in the token: the
payload is readable by whoever holds the token, and a digest of the secret there would let a
leaked token be brute-forced offline for a weak secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote_plus

KEY_FILE = "token.key"
KEY_BYTES = 32


def load_or_create_key(data_dir: Path) -> bytes:
    """The signing key, created with mode 0600 on first use (O_EXCL: two starts agree on one)."""
    path = data_dir / KEY_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ValueError(f"{path}: not a {KEY_BYTES}-byte token key") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    try:
        os.write(descriptor, key)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return key


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sign(self, payload: str, hashed_secret: str) -> str:
        # "." separates them unambiguously: neither base64url nor base64 holds one.
        signed = f"{payload}.{hashed_secret}".encode()
        return _encode(hmac.new(self._key, signed, hashlib.sha256).digest())

    def issue(self, client_id: str, hashed_secret: str, ttl: int, now: float | None = None) -> str:
        """A token for ``client_id``, valid ``ttl`` seconds while its ``hashed_secret`` stays."""
        expiry = int(now if now is not None else time.time()) + ttl
        payload = _encode(json.dumps({"sub": client_id, "exp": expiry}).encode("utf-8"))
        return f"{payload}.{self._sign(payload, hashed_secret)}"

    def verify(
        self,
        token: str,
        hashed_secret_of: Callable[[str], str | None],
        now: float | None = None,
    ) -> str | None:
        """The client id of a genuine, unexpired token issued for the secret the client has now
        (``hashed_secret_of(client id)``, None for a client no longer configured); None
        otherwise."""
        payload, dot, signature = token.partition(".")
        if not dot or not payload.isascii() or not signature.isascii():
            return None
        # The payload is read before the signature is checked (the signature covers the
        # subject's secret); nothing it says is trusted until the comparison below.
        try:
            claims = json.loads(_decode(payload))
        except (binascii.Error, ValueError, RecursionError):
            return None
        if not isinstance(claims, dict):
            return None
        subject, expiry = claims.get("sub"), claims.get("exp")
        if not isinstance(subject, str) or not isinstance(expiry, int):
            return None
        hashed_secret = hashed_secret_of(subject)
        if hashed_secret is None:
            return None
        # Constant time: a forger learns nothing from how long the comparison took.
        if not hmac.compare_digest(self._sign(payload, hashed_secret), signature):
            return None
        if expiry <= (now if now is not None else time.time()):
            return None
        return subject


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def basic_credentials(
    authorization: str | None, form_encoded: bool = True
) -> tuple[str, str] | None:
    """(client id, secret) of an ``Authorization: Basic`` header, or None. ``form_encoded``: the
    token endpoint's form (RFC 6749 §2.3.1, both parts form-urlencoded before being joined);
    otherwise a browser's (RFC 7617: the parts as typed, so a secret may hold ``+`` or ``%``)."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and a non-ASCII header's error
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    if not form_encoded:
        return client_id, secret
    return unquote_plus(client_id), unquote_plus(secret)
