"""Keyed pseudonymisation of PII: the only form in which personal data leaves bronze.

A token is the lowercase hex HMAC-SHA256 of the value under a secret key. The same value always gives
the same token (so silver and gold can join and count on it), and without the key a token cannot be
reversed or recomputed from a guessed value. Callers normalise before tokenising (emails:
`lower(trim(email))`) so that formatting differences do not split one person into two tokens.

The key is only as secret as it is random: a short key, a repeated character or the placeholder printed in
`.env.example` lets anyone who reads the repository recompute every token, so `validate_key` refuses them.
Make one with `openssl rand -hex 32`.
"""

from __future__ import annotations

import hashlib
import hmac

# 32 bytes, as HMAC-SHA256's own block of strength; `openssl rand -hex 32` gives 64 characters.
MIN_KEY_BYTES = 32
# A random key of 32 characters or more has many more distinct characters than this; fewer means a pattern.
MIN_DISTINCT_CHARACTERS = 12
# Documented placeholders (`.env.example`, the README): never a key, whatever their length.
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "replace-me", "your-")


def validate_key(key: bytes) -> bytes:
    """Return `key` if it can be a tokenisation key; raise ValueError saying why not otherwise.

    The message never contains the key itself."""
    advice = "make one with `openssl rand -hex 32`"
    if key.strip().lower().startswith(tuple(p.encode() for p in PLACEHOLDER_PREFIXES)):
        raise ValueError(f"the PII tokenisation key is a documented placeholder, not a secret: {advice}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"the PII tokenisation key must be at least {MIN_KEY_BYTES} random bytes (got {len(key)}): {advice}"
        )
    if len(set(key)) < MIN_DISTINCT_CHARACTERS:
        raise ValueError(
            f"the PII tokenisation key has only {len(set(key))} distinct characters, not a random key: {advice}"
        )
    return key


def pii_token(value: str | None, key: bytes) -> str | None:
    """Lowercase hex HMAC-SHA256 of `value` (UTF-8) under `key`; None stays None."""
    if value is None:
        return None
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
