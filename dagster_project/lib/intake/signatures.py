"""Webhook signature verification on the raw request body, before anything parses it.

Two schemes are supported:

* **Stripe**: header ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``; each ``v1`` is
  HMAC-SHA256 over ``b"<t>." + body`` keyed with the endpoint secret's UTF-8 bytes.
* **Standard Webhooks** (standardwebhooks.com): headers ``webhook-id``, ``webhook-timestamp`` and
  ``webhook-signature: v1,<base64> [v1,<base64> ...]``; each signature is HMAC-SHA256 over
  ``b"<id>.<timestamp>." + body`` keyed with the base64-decoded secret (after the ``whsec_`` prefix).

Several secrets may be configured at once while one is being rotated: a request is accepted when any
signature it carries matches any secret. Timestamps outside the tolerance window, in the past or the
future, are refused so a captured request cannot be replayed later. Every failure raises
`SignatureError` with a short machine-friendly reason that never contains a secret or the body.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["stripe", "standard"]
SCHEMES: tuple[Scheme, ...] = ("stripe", "standard")

STRIPE_SIGNATURE_HEADER = "stripe-signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"

Reason = Literal["missing_header", "malformed_header", "timestamp_out_of_tolerance", "no_matching_signature"]


class SignatureError(Exception):
    """The request is not provably from the sender. `reason` is safe to return and to log."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


@dataclass(frozen=True)
class Verified:
    """What a successful verification established about the delivery."""

    scheme: Scheme
    timestamp: int  # signing time of this delivery attempt (changes on every retry)
    message_id: str | None = None  # Standard Webhooks `webhook-id`; stable across retries


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def _parse_timestamp(raw: str) -> int:
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise SignatureError("malformed_header")
    return int(raw)


def _check_tolerance(timestamp: int, tolerance_seconds: int, now: float | None) -> None:
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError("timestamp_out_of_tolerance")


@functools.lru_cache(maxsize=64)
def _keyed(key: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with `key` already absorbed. Copying it costs a fifth less than keying a new one, and a
    receiver checks every delivery against the same few keys."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _hmac_sha256(key: bytes, *message: bytes) -> bytes:
    """HMAC-SHA256 of the concatenation of `message` (passed in parts, so a body is never copied to prefix it)."""
    mac = _keyed(key).copy()
    for part in message:
        mac.update(part)
    return mac.digest()


# --- Stripe -----------------------------------------------------------------------------------------------


def _parse_stripe_header(value: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            continue  # an item that is no `key=value` pair carries nothing; Stripe's libraries skip it too
        if key == "t":
            if timestamp is not None:
                raise SignatureError("malformed_header")  # two signing times: which one was signed is unknowable
            timestamp = _parse_timestamp(val)
        elif key == "v1":
            signatures.append(val.strip())
        # other schemes (v0 = Stripe's test-mode scheme) are ignored, as Stripe's own libraries do
    if timestamp is None or not signatures:
        raise SignatureError("malformed_header")
    return timestamp, signatures


def verify_stripe(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance_seconds: int,
    now: float | None = None,
) -> Verified:
    """Verify a `Stripe-Signature` header against the raw body; raise `SignatureError` if it fails."""
    if not header or not header.strip():
        raise SignatureError("missing_header")
    timestamp, signatures = _parse_stripe_header(header)
    _check_tolerance(timestamp, tolerance_seconds, now)
    prefix = f"{timestamp}.".encode()
    # compare bytes: `compare_digest` refuses non-ASCII str, and header values are attacker-controlled
    given = [sig.encode("utf-8", "replace") for sig in signatures]
    for secret in secrets:
        expected = _hmac_sha256(secret.encode(), prefix, body).hex().encode()
        for candidate in given:
            if hmac.compare_digest(expected, candidate):
                return Verified(scheme="stripe", timestamp=timestamp)
    raise SignatureError("no_matching_signature")


def sign_stripe(body: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value Stripe would send for `body` (tests, sample data, load test)."""
    digest = _hmac_sha256(secret.encode(), f"{timestamp}.".encode() + body).hex()
    return f"t={timestamp},v1={digest}"


# --- Standard Webhooks ------------------------------------------------------------------------------------


def _b64decode_lenient(encoded: str) -> bytes:
    """Standard base64, with or without its `=` padding (senders and secret stores drop it)."""
    encoded = encoded.strip()
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def standard_secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_<base64>`, padding optional, as the reference
    libraries accept); ValueError if it is not base64."""
    encoded = secret.strip().removeprefix(STANDARD_SECRET_PREFIX)
    try:
        key = _b64decode_lenient(encoded)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret must be base64 after the 'whsec_' prefix") from None
    if not key:
        raise ValueError("a Standard Webhooks secret must not be empty")
    return key


# the same few secrets for every delivery: decoded once each
_standard_key = functools.lru_cache(maxsize=64)(standard_secret_key)


def _parse_standard_signatures(value: str) -> list[bytes]:
    """The `v1` signatures of a `webhook-signature` header (space-delimited `<version>,<base64>` entries).

    An entry that cannot be read is skipped, not fatal: the header may still carry a valid signature beside
    it (a sender signing with several keys). Only a header with no readable entry at all is malformed.
    """
    signatures: list[bytes] = []
    readable = 0
    for entry in value.split():
        version, sep, encoded = entry.partition(",")
        if not sep or not version or not encoded:
            continue
        if version != "v1":
            readable += 1  # e.g. v1a (asymmetric): well formed, but not a scheme this receiver accepts
            continue
        try:
            signatures.append(_b64decode_lenient(encoded))
        except (binascii.Error, ValueError):
            continue
        readable += 1
    if not readable:
        raise SignatureError("malformed_header")
    return signatures


def verify_standard(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    tolerance_seconds: int,
    now: float | None = None,
) -> Verified:
    """Verify Standard Webhooks headers against the raw body; raise `SignatureError` if it fails."""
    message_id = _header(headers, STANDARD_ID_HEADER)
    raw_timestamp = _header(headers, STANDARD_TIMESTAMP_HEADER)
    raw_signatures = _header(headers, STANDARD_SIGNATURE_HEADER)
    if not message_id or not raw_timestamp or not raw_signatures or not raw_signatures.strip():
        raise SignatureError("missing_header")
    message_id = message_id.strip()
    if not message_id:
        raise SignatureError("missing_header")
    timestamp = _parse_timestamp(raw_timestamp)
    signatures = _parse_standard_signatures(raw_signatures)
    _check_tolerance(timestamp, tolerance_seconds, now)
    prefix = f"{message_id}.{timestamp}.".encode()
    for secret in secrets:
        expected = _hmac_sha256(_standard_key(secret), prefix, body)
        for candidate in signatures:
            if hmac.compare_digest(expected, candidate):
                return Verified(scheme="standard", timestamp=timestamp, message_id=message_id)
    raise SignatureError("no_matching_signature")


def sign_standard(body: bytes, secret: str, message_id: str, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers a sender would attach to `body`."""
    digest = _hmac_sha256(standard_secret_key(secret), f"{message_id}.{timestamp}.".encode() + body)
    return {
        STANDARD_ID_HEADER: message_id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: "v1," + base64.b64encode(digest).decode(),
    }


def verify(
    scheme: Scheme,
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    tolerance_seconds: int,
    now: float | None = None,
) -> Verified:
    """Verify a delivery with the provider's scheme; `headers` may be any case-insensitive mapping."""
    if scheme == "stripe":
        return verify_stripe(
            body, _header(headers, STRIPE_SIGNATURE_HEADER), secrets, tolerance_seconds=tolerance_seconds, now=now
        )
    if scheme == "standard":
        return verify_standard(body, headers, secrets, tolerance_seconds=tolerance_seconds, now=now)
    raise ValueError(f"unknown signature scheme {scheme!r}")
