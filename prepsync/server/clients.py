"""The reference server's OpenID clients and their secrets.

Clients are the configuration's ``<OpenIdClient Identifier HashedSecret [Connectors]
[Profile]>`` elements; ``HashedSecret`` is base64(SHA-256(secret)), the form Identity Manager
uses, so a configuration written for Identity Manager authenticates the same agents here.
Secrets are only ever compared hashed and in constant time.

Two roles, by ``Profile`` (Identity Manager's attribute): a client whose profile is the
server's operator profile (``serve --operator-profile``, ``Administrator`` by default) reviews
and settles sessions (force, cancel, changes) on the connectors it is allowed on; any other
client, or one without ``Profile``, only delivers (see :mod:`prepsync.server.guards`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from prepsync.config import configuration_elements, required_attribute
from prepsync.errors import ConfigError

OPENID_CLIENT = "OpenIdClient"


@dataclass(frozen=True)
class OpenIdClient:
    """An API client of the reference server, from ``<OpenIdClient Identifier HashedSecret>``."""

    identifier: str
    hashed_secret: str  # base64 of the secret's SHA-256, as in the XML
    connectors: frozenset[str] | None  # from Connectors="AD HR"; None = every connector
    profile: str | None = None  # from Profile="Administrator"; compared exactly

    def check_secret(self, secret: str) -> bool:
        """Constant-time comparison, so response times do not leak how much of a guess matched."""
        try:
            offered = hash_secret(secret)
        except UnicodeEncodeError:  # a lone surrogate cannot be any configured secret
            return False
        return hmac.compare_digest(offered.encode("ascii"), self.hashed_secret.encode("utf-8"))

    def may_use(self, connector: str) -> bool:
        return self.connectors is None or connector in self.connectors


def hash_secret(secret: str) -> str:
    """base64(SHA-256(UTF-8 secret)): the ``HashedSecret`` form Identity Manager uses."""
    return base64.b64encode(hashlib.sha256(secret.encode("utf-8")).digest()).decode("ascii")


def load_clients(path: str | os.PathLike[str]) -> dict[str, OpenIdClient]:
    """Every ``OpenIdClient`` in the configuration, by identifier (duplicates are an error)."""
    clients: dict[str, OpenIdClient] = {}
    first_definitions: dict[str, str] = {}
    for location, attributes in configuration_elements(path, OPENID_CLIENT):
        client = _openid_client(attributes, location)
        if client.identifier in clients:
            raise ConfigError(
                f"{location}: OpenIdClient {client.identifier!r} is defined twice "
                f"(first at {first_definitions[client.identifier]})"
            )
        clients[client.identifier] = client
        first_definitions[client.identifier] = location
    return clients


def _openid_client(attributes: Mapping[str, str], location: str) -> OpenIdClient:
    identifier = required_attribute(attributes, OPENID_CLIENT, "Identifier", location)
    hashed_secret = required_attribute(attributes, OPENID_CLIENT, "HashedSecret", location)
    try:
        digest = base64.b64decode(hashed_secret, validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        # Most likely the secret itself was pasted in: say so without echoing it.
        raise ConfigError(
            f"{location}: OpenIdClient {identifier!r}: HashedSecret is not the base64 of a "
            "SHA-256 digest (44 characters)"
        )
    connectors: frozenset[str] | None = None
    listed = attributes.get("Connectors")
    if listed is not None:
        connectors = frozenset(name for name in re.split(r"[\s,]+", listed) if name)
        if not connectors:
            raise ConfigError(
                f"{location}: OpenIdClient {identifier!r}: Connectors is empty "
                "(leave it out to allow every connector)"
            )
    return OpenIdClient(identifier, hashed_secret, connectors, attributes.get("Profile"))
