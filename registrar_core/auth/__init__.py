"""Digest authentication (RFC 3261 §22, RFC 7616/8760) and the subscriber table."""

from .authenticator import Authenticator, AuthOutcome, Refusal, authorised_for
from .digest import ALGORITHMS, Credentials, DigestError, ha1, parse_authorization, response
from .nonce import FORGED, STALE, NonceFactory, load_key
from .subscribers import SubscriberError, Subscribers, split_user

__all__ = [
    "ALGORITHMS", "FORGED", "STALE", "AuthOutcome", "Authenticator", "Credentials", "DigestError",
    "NonceFactory", "Refusal", "SubscriberError", "Subscribers", "authorised_for", "ha1",
    "load_key", "parse_authorization", "response", "split_user",
]
