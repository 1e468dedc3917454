import secrets

import pytest

from dagster_project.lib.masking import pii_token, validate_key


def test_a_random_key_of_32_bytes_is_accepted():
    key = secrets.token_hex(32).encode()
    assert validate_key(key) == key
    assert validate_key(secrets.token_bytes(32)) is not None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"change-me-pii-hmac-key", "placeholder"),  # the value .env.example ships
        (b"change-me-pii-hmac-key-but-made-much-longer-0123456789", "placeholder"),
        (b"  CHANGE-ME-pii-hmac-key-padded-to-be-long-enough-abcdef", "placeholder"),
        (b"0123456789abcdef0123456789abcd", "at least 32 random bytes"),
        (b"a" * 64, "distinct characters"),
        (b"abababababababababababababababab", "distinct characters"),
    ],
)
def test_weak_or_placeholder_keys_are_refused_without_quoting_them(key, reason):
    with pytest.raises(ValueError, match=reason) as raised:
        validate_key(key)
    assert key.decode().strip() not in str(raised.value)


def test_the_placeholder_in_env_example_is_refused():
    from dagster_project import settings

    example = (settings.project_root() / ".env.example").read_text()
    value = next(line.split("=", 1)[1] for line in example.splitlines() if line.startswith("MEDALLION_PII_HMAC_KEY="))
    with pytest.raises(ValueError, match="placeholder"):
        validate_key(value.encode())


def test_tokens_are_keyed():
    a, b = secrets.token_hex(32).encode(), secrets.token_hex(32).encode()
    assert pii_token("x@example.com", a) != pii_token("x@example.com", b)
    assert pii_token(None, a) is None
