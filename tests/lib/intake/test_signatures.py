import base64
import json

import pytest

from dagster_project.lib.intake.signatures import (
    SignatureError,
    sign_standard,
    sign_stripe,
    standard_secret_key,
    verify,
    verify_standard,
    verify_stripe,
)

NOW = 1_763_000_000
TOLERANCE = 300
STRIPE_SECRET = "whsec_stripe_current"
STRIPE_OLD_SECRET = "whsec_stripe_previous"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-32byte").decode()
STANDARD_OLD_SECRET = "whsec_" + base64.b64encode(b"the-previous-standard-secret-key!").decode()
BODY = b'{"id":"evt_1","object":"event","type":"charge.succeeded","created":1763000000}'


def _stripe(body: bytes, header: str | None, secrets=(STRIPE_SECRET,), now: float = NOW):
    return verify_stripe(body, header, list(secrets), tolerance_seconds=TOLERANCE, now=now)


def _standard(body: bytes, headers: dict[str, str], secrets=(STANDARD_SECRET,), now: float = NOW):
    return verify_standard(body, headers, list(secrets), tolerance_seconds=TOLERANCE, now=now)


def _reason(excinfo: pytest.ExceptionInfo[SignatureError]) -> str:
    return excinfo.value.reason


# --- Stripe -----------------------------------------------------------------------------------------------


def test_stripe_valid_signature_is_accepted():
    verified = _stripe(BODY, sign_stripe(BODY, STRIPE_SECRET, NOW))
    assert verified.scheme == "stripe"
    assert verified.timestamp == NOW


def test_stripe_signature_matches_the_documented_construction():
    # Stripe: HMAC-SHA256 of "<t>.<raw body>" with the endpoint secret, hex encoded
    import hashlib
    import hmac

    expected = hmac.new(STRIPE_SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_stripe(BODY, STRIPE_SECRET, NOW) == f"t={NOW},v1={expected}"


def test_stripe_wrong_secret_is_rejected():
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, sign_stripe(BODY, "whsec_someone_else", NOW))
    assert _reason(excinfo) == "no_matching_signature"


def test_stripe_tampered_body_is_rejected():
    header = sign_stripe(BODY, STRIPE_SECRET, NOW)
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY.replace(b"charge.succeeded", b"charge.refunded"), header)
    assert _reason(excinfo) == "no_matching_signature"


def test_stripe_reserialised_json_is_rejected():
    # same JSON value, different bytes: a verifier that parses first would accept it
    reserialised = json.dumps(json.loads(BODY), indent=2).encode()
    assert json.loads(reserialised) == json.loads(BODY)
    with pytest.raises(SignatureError) as excinfo:
        _stripe(reserialised, sign_stripe(BODY, STRIPE_SECRET, NOW))
    assert _reason(excinfo) == "no_matching_signature"


@pytest.mark.parametrize("skew", [-(TOLERANCE + 1), TOLERANCE + 1, -86_400, 86_400])
def test_stripe_timestamp_outside_tolerance_is_rejected(skew: int):
    # negative skew: signed in the past (replay); positive: signed in the future
    header = sign_stripe(BODY, STRIPE_SECRET, NOW + skew)
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, header)
    assert _reason(excinfo) == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("skew", [-TOLERANCE, TOLERANCE, 0])
def test_stripe_timestamp_at_the_edge_of_tolerance_is_accepted(skew: int):
    _stripe(BODY, sign_stripe(BODY, STRIPE_SECRET, NOW + skew))


def test_stripe_rotated_secrets_accept_old_and_new():
    secrets = (STRIPE_SECRET, STRIPE_OLD_SECRET)
    _stripe(BODY, sign_stripe(BODY, STRIPE_SECRET, NOW), secrets=secrets)
    _stripe(BODY, sign_stripe(BODY, STRIPE_OLD_SECRET, NOW), secrets=secrets)
    with pytest.raises(SignatureError):
        _stripe(BODY, sign_stripe(BODY, STRIPE_OLD_SECRET, NOW), secrets=(STRIPE_SECRET,))


def test_stripe_header_with_several_v1_signatures_matches_any():
    # Stripe sends one v1 per active secret while the sender rolls its secret
    good = sign_stripe(BODY, STRIPE_SECRET, NOW).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},{good},v0=ignored"
    _stripe(BODY, header)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_stripe_missing_header(header: str | None):
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, header)
    assert _reason(excinfo) == "missing_header"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"t={NOW}",  # no v1
        "v1=abcdef",  # no t
        "t=yesterday,v1=abcdef",
        f"t={NOW},t={NOW},v1=abcdef",
        f"t=-{NOW},v1=abcdef",
        "t=١٢٣,v1=abcdef",  # non-ASCII digits
    ],
)
def test_stripe_malformed_header(header: str):
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, header)
    assert _reason(excinfo) == "malformed_header"


def test_stripe_non_ascii_signature_is_a_mismatch_not_a_crash():
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, f"t={NOW},v1=é{'a' * 63}")
    assert _reason(excinfo) == "no_matching_signature"


def test_stripe_no_secret_configured_matches_nothing():
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, sign_stripe(BODY, STRIPE_SECRET, NOW), secrets=())
    assert _reason(excinfo) == "no_matching_signature"


# --- Standard Webhooks ------------------------------------------------------------------------------------


def test_standard_valid_signature_is_accepted():
    headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    verified = _standard(BODY, headers)
    assert (verified.scheme, verified.message_id, verified.timestamp) == ("standard", "msg_1", NOW)


def test_standard_signature_matches_the_specification_test_vector():
    # the example published with the Standard Webhooks specification (and the svix libraries)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = sign_standard(body, secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_headers_are_case_insensitive():
    headers = {k.title(): v for k, v in sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW).items()}
    _standard(BODY, headers)


def test_standard_wrong_secret_is_rejected():
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, sign_standard(BODY, other, "msg_1", NOW))
    assert _reason(excinfo) == "no_matching_signature"


def test_standard_tampered_body_and_id_are_rejected():
    headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    with pytest.raises(SignatureError):
        _standard(BODY + b" ", headers)
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, {**headers, "webhook-id": "msg_2"})
    assert _reason(excinfo) == "no_matching_signature"


def test_standard_reserialised_json_is_rejected():
    headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    with pytest.raises(SignatureError) as excinfo:
        _standard(json.dumps(json.loads(BODY), separators=(",", ":"), sort_keys=True).encode(), headers)
    assert _reason(excinfo) == "no_matching_signature"


@pytest.mark.parametrize("skew", [-(TOLERANCE + 1), TOLERANCE + 1])
def test_standard_timestamp_outside_tolerance_is_rejected(skew: int):
    headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW + skew)
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, headers)
    assert _reason(excinfo) == "timestamp_out_of_tolerance"


def test_standard_rotated_secrets_accept_old_and_new():
    secrets = (STANDARD_SECRET, STANDARD_OLD_SECRET)
    _standard(BODY, sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW), secrets=secrets)
    _standard(BODY, sign_standard(BODY, STANDARD_OLD_SECRET, "msg_1", NOW), secrets=secrets)


def test_standard_several_signatures_in_one_header_match_any():
    good = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    bogus = "v1," + base64.b64encode(b"\0" * 32).decode()
    headers = {**good, "webhook-signature": f"{bogus} v1a,ignored {good['webhook-signature']}"}
    _standard(BODY, headers)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_missing_header(missing: str):
    headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    del headers[missing]
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, headers)
    assert _reason(excinfo) == "missing_header"


@pytest.mark.parametrize(
    "override",
    [
        {"webhook-timestamp": "soon"},
        {"webhook-timestamp": "1.5"},
        {"webhook-signature": "v1"},  # no comma
        {"webhook-signature": "v1,not*base64!"},
    ],
)
def test_standard_malformed_header(override: dict[str, str]):
    headers = {**sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW), **override}
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, headers)
    assert _reason(excinfo) == "malformed_header"


def test_standard_secret_must_be_base64():
    with pytest.raises(ValueError):
        standard_secret_key("whsec_not base64!")
    assert standard_secret_key(STANDARD_SECRET) == b"standard-webhooks-test-key-32byte"


def test_error_reason_never_contains_the_secret_or_body():
    with pytest.raises(SignatureError) as excinfo:
        _stripe(BODY, sign_stripe(BODY, "wrong", NOW))
    assert STRIPE_SECRET not in str(excinfo.value)
    assert "evt_1" not in str(excinfo.value)


def test_verify_dispatches_on_scheme():
    stripe_headers = {"Stripe-Signature": sign_stripe(BODY, STRIPE_SECRET, NOW)}
    assert verify("stripe", BODY, stripe_headers, [STRIPE_SECRET], tolerance_seconds=TOLERANCE, now=NOW)
    standard_headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    assert verify("standard", BODY, standard_headers, [STANDARD_SECRET], tolerance_seconds=TOLERANCE, now=NOW)
    with pytest.raises(ValueError):
        verify("github", BODY, {}, [], tolerance_seconds=TOLERANCE)  # type: ignore[arg-type]


# --- lenient where the reference libraries are, strict where the specs are --------------------------------


def test_standard_secret_without_base64_padding_is_accepted():
    # 31 bytes encode to 44 characters with one `=`; secret stores and some senders drop the padding
    key = b"a-31-byte-standard-webhooks-key"
    padded = "whsec_" + base64.b64encode(key).decode()
    unpadded = padded.rstrip("=")
    assert padded.endswith("=") and unpadded != padded
    assert standard_secret_key(unpadded) == standard_secret_key(padded) == key
    _standard(BODY, sign_standard(BODY, padded, "msg_1", NOW), secrets=(unpadded,))


@pytest.mark.parametrize("malformed", ["v1", "v1,not*base64!", ",", "v1,", "garbage"])
def test_standard_one_malformed_entry_does_not_fail_a_header_with_a_valid_one(malformed: str):
    good = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    for value in (f"{malformed} {good['webhook-signature']}", f"{good['webhook-signature']} {malformed}"):
        verified = _standard(BODY, {**good, "webhook-signature": value})
        assert verified.message_id == "msg_1"


def test_standard_header_with_only_unreadable_entries_is_malformed_and_a_readable_wrong_one_a_mismatch():
    headers = sign_standard(BODY, STANDARD_SECRET, "msg_1", NOW)
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, {**headers, "webhook-signature": "v1 v1,*** nonsense"})
    assert _reason(excinfo) == "malformed_header"
    wrong = "v1," + base64.b64encode(b"\1" * 32).decode()
    with pytest.raises(SignatureError) as excinfo:
        _standard(BODY, {**headers, "webhook-signature": f"v1,*** {wrong}"})
    assert _reason(excinfo) == "no_matching_signature"


def test_stripe_item_that_is_no_pair_does_not_fail_a_header_with_a_valid_signature():
    header = sign_stripe(BODY, STRIPE_SECRET, NOW)
    assert _stripe(BODY, f"{header},garbage").timestamp == NOW
    assert _stripe(BODY, f"junk,{header}").timestamp == NOW
