"""Keyed pseudonymisation of PII: the only form in which personal data leaves bronze.

A token is the lowercase hex HMAC-SHA256 of the value under a secret key. The same value always gives
the same token (so silver and gold can join and count on it), and without the key a token cannot be
reversed or recomputed from a guessed value. Callers normalise before tokenising (emails:
`lower(trim(email))`) so that formatting differences do not split one person into two tokens.
"""

from __future__ import annotations

import hashlib
import hmac

# HMAC accepts any key length, but a short key is guessable; 16 bytes is the floor this platform accepts.
MIN_KEY_BYTES = 16


def validate_key(key: bytes) -> bytes:
    """Return `key` if it is long enough to be a tokenisation key; raise ValueError otherwise.

    The message never contains the key itself.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the PII tokenisation key must be at least {MIN_KEY_BYTES} bytes long (got {len(key)})")
    return key


def pii_token(value: str | None, key: bytes) -> str | None:
    """Lowercase hex HMAC-SHA256 of `value` (UTF-8) under `key`; None stays None."""
    if value is None:
        return None
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
