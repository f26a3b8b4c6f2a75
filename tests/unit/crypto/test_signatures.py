"""crypto.signatures: webhook HMAC headers, biller RSA parameter signatures and Ed25519 device signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.signatures import (
    MAX_WEBHOOK_HEADER_LENGTH,
    WEBHOOK_TOLERANCE_SECONDS,
    SignatureError,
    SignatureExpired,
    SignatureMalformed,
    SignatureMismatch,
    canonical_params,
    ed25519_sign,
    ed25519_verify,
    hmac_sha256_hex,
    load_ed25519_public_key,
    rsa_sign_params,
    rsa_verify_params,
    sign_webhook,
    verify_webhook,
)

T0 = 1_700_000_000
OLD = b"whsec_old_secret"
NEW = "whsec_new_secret"
BODY = b'{"id":"evt_1","type":"payment.succeeded"}'

secrets_st = st.lists(
    st.binary(min_size=1, max_size=64) | st.text(min_size=1, max_size=32), min_size=1, max_size=4
)
timestamps = st.integers(min_value=0, max_value=10**12)


def _v1s(header: str) -> list[str]:
    return [item[3:] for item in header.split(",") if item.startswith("v1=")]


# ------------------------------------------------------------------------------------------ hierarchy


def test_error_hierarchy() -> None:
    for cls in (SignatureMalformed, SignatureMismatch, SignatureExpired):
        assert issubclass(cls, SignatureError)
    assert issubclass(SignatureError, Exception)
    assert WEBHOOK_TOLERANCE_SECONDS == 300


# ------------------------------------------------------------------------------------------- webhooks


def test_hmac_helper_matches_stdlib() -> None:
    assert hmac_sha256_hex(b"k", b"m") == hmac.new(b"k", b"m", hashlib.sha256).hexdigest()


def test_sign_webhook_known_answer() -> None:
    # The format in DESIGN §6, computed independently: HMAC-SHA256(secret, "<t>.<raw body>").
    expected_old = hmac.new(OLD, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    expected_new = hmac.new(NEW.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    header = sign_webhook(BODY, [OLD, NEW], timestamp=T0)
    assert header == f"t=1700000000,v1={expected_old},v1={expected_new}"


def test_sign_webhook_defaults_to_current_time() -> None:
    header = sign_webhook(BODY, [OLD])
    assert verify_webhook(BODY, header, [OLD]) == int(header.split(",")[0][2:])


@given(body=st.binary(max_size=2048), secrets=secrets_st, timestamp=timestamps)
def test_webhook_round_trip(body: bytes, secrets: list[bytes | str], timestamp: int) -> None:
    header = sign_webhook(body, secrets, timestamp=timestamp)
    assert len(_v1s(header)) == len(secrets)
    assert verify_webhook(body, header, secrets, now=timestamp) == timestamp
    for secret in secrets:
        assert verify_webhook(body, header, [secret], now=timestamp) == timestamp


def test_str_secret_is_its_utf8_bytes() -> None:
    header = sign_webhook(BODY, ["sécret"], timestamp=T0)
    assert verify_webhook(BODY, header, ["sécret".encode()], now=T0) == T0


@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_flipping_any_body_byte_fails(body: bytes, data: st.DataObject) -> None:
    header = sign_webhook(body, [OLD, NEW], timestamp=T0)
    index = data.draw(st.integers(0, len(body) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ mask]) + body[index + 1 :]
    with pytest.raises(SignatureMismatch):
        verify_webhook(tampered, header, [OLD, NEW], now=T0)


@given(data=st.data())
def test_changing_any_signature_hex_character_fails(data: st.DataObject) -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    start = header.index("v1=") + 3
    index = data.draw(st.integers(start, len(header) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != header[index]))
    tampered = header[:index] + replacement + header[index + 1 :]
    with pytest.raises(SignatureError):
        verify_webhook(BODY, tampered, [OLD], now=T0)


def test_every_hex_position_is_covered() -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    start = header.index("v1=") + 3
    for index in range(start, len(header)):
        for replacement in "0123456789abcdef":
            if replacement == header[index]:
                continue
            tampered = header[:index] + replacement + header[index + 1 :]
            with pytest.raises(SignatureMismatch):
                verify_webhook(BODY, tampered, [OLD], now=T0)


@given(delta=st.integers(-WEBHOOK_TOLERANCE_SECONDS, WEBHOOK_TOLERANCE_SECONDS).filter(bool))
def test_changing_t_fails(delta: int) -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    tampered = header.replace(f"t={T0}", f"t={T0 + delta}")
    with pytest.raises(SignatureMismatch):
        verify_webhook(BODY, tampered, [OLD], now=T0)


def test_rotation_old_new_and_third_secret() -> None:
    header = sign_webhook(BODY, [OLD, NEW], timestamp=T0)
    assert verify_webhook(BODY, header, [OLD], now=T0) == T0
    assert verify_webhook(BODY, header, [NEW], now=T0) == T0
    assert verify_webhook(BODY, header, [b"unrelated", NEW], now=T0) == T0
    with pytest.raises(SignatureMismatch):
        verify_webhook(BODY, header, [b"whsec_third"], now=T0)


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamp_within_tolerance_passes(offset: int) -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    assert verify_webhook(BODY, header, [OLD], now=T0 + offset) == T0


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 10**9])
def test_timestamp_outside_tolerance_expires(offset: int) -> None:
    # Positive offset: the signature is old (replay); negative: it claims to come from the future.
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    with pytest.raises(SignatureExpired):
        verify_webhook(BODY, header, [OLD], now=T0 + offset)


def test_custom_tolerance() -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    assert verify_webhook(BODY, header, [OLD], now=T0, tolerance=0) == T0
    with pytest.raises(SignatureExpired):
        verify_webhook(BODY, header, [OLD], now=T0 + 1, tolerance=0)
    assert verify_webhook(BODY, header, [OLD], now=T0 + 3600, tolerance=3600) == T0


def test_forgery_with_stale_timestamp_is_a_mismatch_not_expired() -> None:
    # "Expired" is reserved for authentic deliveries, so it can be logged as a replay/clock problem.
    header = sign_webhook(BODY, [b"attacker"], timestamp=T0 - 10_000)
    with pytest.raises(SignatureMismatch):
        verify_webhook(BODY, header, [OLD], now=T0)


def test_unknown_schemes_and_whitespace_are_tolerated() -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    t_item, v1_item = header.split(",")
    assert verify_webhook(BODY, f"v0=deadbeef,{t_item},v2=whatever,{v1_item}", [OLD], now=T0) == T0
    assert verify_webhook(BODY, f"{t_item}, {v1_item}", [OLD], now=T0) == T0
    assert verify_webhook(BODY, f" {v1_item} ,\t{t_item}", [OLD], now=T0) == T0
    # A bad v1 next to a good one still verifies: rotation leaves stale signatures in the header.
    assert verify_webhook(BODY, f"{t_item},v1={'0' * 64},{v1_item}", [OLD], now=T0) == T0


def test_unknown_scheme_alone_never_verifies() -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    as_v0 = header.replace("v1=", "v0=")
    with pytest.raises(SignatureMalformed):
        verify_webhook(BODY, as_v0, [OLD], now=T0)


GOOD_V1 = "v1=" + "ab" * 32

MALFORMED_HEADERS = [
    "",
    " ",
    ",",
    GOOD_V1,  # missing t
    f"t=,{GOOD_V1}",
    f"t=abc,{GOOD_V1}",
    f"t=12.5,{GOOD_V1}",
    f"t=-5,{GOOD_V1}",
    f"t=+5,{GOOD_V1}",
    f"t=1_700_000_000,{GOOD_V1}",
    f"t=0170,{GOOD_V1}",
    "t=\u0661\u0667\u0660," + GOOD_V1,  # Arabic-Indic digits: int() would accept them
    f"t={'9' * 40},{GOOD_V1}",
    f"t=1,t=1,{GOOD_V1}",  # duplicate t
    f"t=1,t=2,{GOOD_V1}",
    "t=1",  # no v1
    "t=1,v0=" + "ab" * 32,
    "t=1,v1=",
    "t=1,v1=" + "AB" * 32,  # uppercase hex
    "t=1,v1=" + "ab" * 31,  # short
    "t=1,v1=" + "ab" * 33,  # long
    "t=1,v1=" + "zz" * 32,
    f"t=1,{GOOD_V1},",  # trailing comma
    f"t=1,,{GOOD_V1}",
    f"t=1;{GOOD_V1}",
    f"t 1,{GOOD_V1}",
    f"T=1,{GOOD_V1}",
    f"t=1,{GOOD_V1},garbage",
    f"t=1,{GOOD_V1},=x",
    f"t=1,{GOOD_V1}\n",
    f"t=1,{GOOD_V1},x=é",  # non-ASCII
    f"t=1,{GOOD_V1}" + ",v0=" + "a" * MAX_WEBHOOK_HEADER_LENGTH,  # huge
    "t=1," + ",".join([GOOD_V1] * 200),  # huge by repetition
]


@pytest.mark.parametrize("header", MALFORMED_HEADERS)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(SignatureMalformed):
        verify_webhook(BODY, header, [OLD], now=1)


def test_missing_header_is_malformed() -> None:
    with pytest.raises(SignatureMalformed):
        verify_webhook(BODY, None, [OLD], now=T0)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(header=st.text(max_size=300))
def test_arbitrary_header_only_raises_signature_errors(header: str) -> None:
    with pytest.raises(SignatureError):
        verify_webhook(BODY, header, [OLD, NEW], now=T0)


_fragments = st.sampled_from(
    ["t=1700000000", "t=0", "t=", "t=x", "v1=", GOOD_V1, "v1=" + "0" * 64, "v0=1", "=", "", " ", "t", "v1"]
)


@settings(max_examples=300)
@given(items=st.lists(_fragments | st.text(max_size=8), max_size=6), sep=st.sampled_from([",", ", ", ";"]))
def test_near_valid_header_only_raises_signature_errors(items: list[str], sep: str) -> None:
    with pytest.raises(SignatureError):
        verify_webhook(BODY, sep.join(items), [OLD], now=T0)


def test_configuration_errors_are_not_signature_errors() -> None:
    header = sign_webhook(BODY, [OLD], timestamp=T0)
    with pytest.raises(ValueError, match="at least one"):
        verify_webhook(BODY, header, [], now=T0)
    with pytest.raises(ValueError, match="empty"):
        verify_webhook(BODY, header, [b""], now=T0)
    with pytest.raises(TypeError):
        verify_webhook(BODY, header, "whsec_x", now=T0)
    with pytest.raises(ValueError, match="tolerance"):
        verify_webhook(BODY, header, [OLD], now=T0, tolerance=-1)
    with pytest.raises(ValueError, match="at least one"):
        sign_webhook(BODY, [])
    with pytest.raises(ValueError, match="timestamp"):
        sign_webhook(BODY, [OLD], timestamp=-1)


# ---------------------------------------------------------------------------------- canonical params


def test_canonical_params_biller_example() -> None:
    params = {
        "service": "bill.pay",
        "amount": 12850,
        "account_number": "0031234567",
        "memo": "",
        "coupon": None,
        "sign": "c2lnbg==",
        "sign_type": "RSA2",
    }
    assert canonical_params(params) == b"account_number=0031234567&amount=12850&service=bill.pay"


def test_canonical_params_rendering() -> None:
    params = {
        "t": True,
        "f": False,
        "zero": 0,
        "neg": -7,
        "rate": 0.1,
        "dec": Decimal("128.50"),
        "biz": {"z": 1, "a": ["中", None, 2.5]},
        "empty_list": [],
        "tuple": (1, 2),
    }
    assert (
        canonical_params(params)
        == (
            'biz={"a":["中",null,2.5],"z":1}&dec=128.50&empty_list=[]&f=false&neg=-7'
            "&rate=0.1&t=true&tuple=[1,2]&zero=0"
        ).encode()
    )


def test_canonical_params_sorts_by_code_point_and_encodes_utf8() -> None:
    params = {"中文": "值", "é": "ü", "a": "1", "Z": "2", "_": "3", "a1": "4", "a_": "5"}
    assert canonical_params(params) == "Z=2&_=3&a=1&a1=4&a_=5&é=ü&中文=值".encode()


def test_canonical_params_exclude_and_empty() -> None:
    assert canonical_params({}) == b""
    assert canonical_params({"a": "", "b": None, "sign": "x"}) == b""
    assert canonical_params({"a": "1", "sign": "x", "sign_type": "RSA2"}, exclude=("sign",)) == (
        b"a=1&sign_type=RSA2"
    )
    assert canonical_params({"a": "1", "sign": "x"}, exclude=()) == b"a=1&sign=x"


def test_canonical_params_refuses_ambiguous_or_unknown_input() -> None:
    with pytest.raises(ValueError, match="unambiguously"):
        canonical_params({"a=b": "1"})
    with pytest.raises(ValueError, match="unambiguously"):
        canonical_params({"a&b": "1"})
    with pytest.raises(ValueError, match="non-finite"):
        canonical_params({"a": float("nan")})
    with pytest.raises(ValueError, match="non-finite"):
        canonical_params({"a": Decimal("Infinity")})
    with pytest.raises(TypeError):
        canonical_params({"a": b"bytes"})
    with pytest.raises(TypeError):
        canonical_params({"a": object()})
    with pytest.raises(UnicodeEncodeError):
        canonical_params({"a": "\ud800"})


# Surrogates excluded: they cannot be UTF-8 encoded, so they never arrive off the wire.
_param_names = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="=&"), min_size=1)
_param_values = st.none() | st.text(max_size=10) | st.integers() | st.booleans()


@given(params=st.dictionaries(_param_names, _param_values))
def test_canonical_params_ignores_insertion_order(params: dict[str, object]) -> None:
    reordered = dict(reversed(list(params.items())))
    assert canonical_params(reordered) == canonical_params(params)
    assert canonical_params({**params, "sign": "anything"}) == canonical_params(params)


# ------------------------------------------------------------------------------------------------- RSA

PARAMS: dict[str, object] = {
    "service": "bill.pay",
    "partner_id": "2088000000000001",
    "account_number": "0031234567",
    "amount": 12850,
    "currency": "CNY",
    "out_trade_no": "pay_01HZX",
    "notify_url": "https://payhub.local/v1/connectors/utility_biller/callbacks?x=1&y=2",
    "timestamp": "2024-06-01 12:00:00",
    "memo": "六月电费",
    "biz_content": {"bill_ref": "B-17", "period": "2024-06"},
}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    # Module scope: 2048-bit key generation takes ~50-500 ms, too slow to repeat per test.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("scheme", ["pkcs1v15", "pss"])
def test_rsa_round_trip(rsa_key: rsa.RSAPrivateKey, scheme: str) -> None:
    signature = rsa_sign_params(PARAMS, rsa_key, scheme=scheme)  # type: ignore[arg-type]
    base64.b64decode(signature, validate=True)  # standard base64, as billers send it
    rsa_verify_params(PARAMS, signature, rsa_key.public_key(), scheme=scheme)  # type: ignore[arg-type]
    # The received form still carries sign/sign_type; they are not part of the signed bytes.
    received = {**PARAMS, "sign": signature, "sign_type": "RSA2"}
    rsa_verify_params(received, signature, rsa_key.public_key(), scheme=scheme)  # type: ignore[arg-type]


def test_rsa_pkcs1v15_is_plain_rsa_sha256_over_canonical_bytes(rsa_key: rsa.RSAPrivateKey) -> None:
    # Interop: what any biller's SHA256withRSA produces over the canonical string.
    raw = rsa_key.sign(canonical_params(PARAMS), padding.PKCS1v15(), hashes.SHA256())
    assert rsa_sign_params(PARAMS, rsa_key) == base64.b64encode(raw).decode()  # PKCS#1 v1.5 is deterministic


def test_rsa_pss_accepts_max_salt_from_peers(rsa_key: rsa.RSAPrivateKey) -> None:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    signature = base64.b64encode(rsa_key.sign(canonical_params(PARAMS), pss, hashes.SHA256())).decode()
    rsa_verify_params(PARAMS, signature, rsa_key.public_key(), scheme="pss")


def test_rsa_accepts_base64url_signature(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = rsa_sign_params(PARAMS, rsa_key)
    urlsafe = signature.replace("+", "-").replace("/", "_").rstrip("=")
    rsa_verify_params(PARAMS, urlsafe, rsa_key.public_key())


@pytest.mark.parametrize(
    "tamper",
    [
        {"amount": 12851},
        {"amount": "12850 "},
        {"account_number": "0031234568"},
        {"extra": "1"},
        {"memo": "七月电费"},
        {"biz_content": {"bill_ref": "B-18", "period": "2024-06"}},
    ],
)
def test_rsa_param_tamper_fails(rsa_key: rsa.RSAPrivateKey, tamper: dict[str, object]) -> None:
    signature = rsa_sign_params(PARAMS, rsa_key)
    with pytest.raises(SignatureMismatch):
        rsa_verify_params({**PARAMS, **tamper}, signature, rsa_key.public_key())


def test_rsa_dropped_param_fails(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = rsa_sign_params(PARAMS, rsa_key)
    partial = {k: v for k, v in PARAMS.items() if k != "amount"}
    with pytest.raises(SignatureMismatch):
        rsa_verify_params(partial, signature, rsa_key.public_key())


def test_rsa_wrong_scheme_or_key_fails(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = rsa_sign_params(PARAMS, rsa_key, scheme="pss")
    with pytest.raises(SignatureMismatch):
        rsa_verify_params(PARAMS, signature, rsa_key.public_key(), scheme="pkcs1v15")
    with pytest.raises(SignatureMismatch):
        rsa_verify_params(PARAMS, signature, other.public_key(), scheme="pss")


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_rsa_flipped_signature_byte_fails(rsa_key: rsa.RSAPrivateKey, data: st.DataObject) -> None:
    raw = bytearray(base64.b64decode(rsa_sign_params(PARAMS, rsa_key)))
    raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SignatureError):
        rsa_verify_params(PARAMS, base64.b64encode(bytes(raw)).decode(), rsa_key.public_key())


@settings(max_examples=25, deadline=None)
@given(params=st.dictionaries(_param_names, _param_values))
def test_rsa_property_round_trip(rsa_key: rsa.RSAPrivateKey, params: dict[str, object]) -> None:
    signature = rsa_sign_params(params, rsa_key)
    rsa_verify_params(dict(reversed(list(params.items()))), signature, rsa_key.public_key())


@pytest.mark.parametrize(
    "signature",
    ["", "not base64!", "c2lnbg==", "=" * 4, "AAAA" * 2000, "ab+/cd-_" * 43, "签名"],
)
def test_rsa_malformed_signature(rsa_key: rsa.RSAPrivateKey, signature: str) -> None:
    with pytest.raises(SignatureMalformed):
        rsa_verify_params(PARAMS, signature, rsa_key.public_key())


def test_rsa_unrenderable_wire_params_are_malformed(rsa_key: rsa.RSAPrivateKey) -> None:
    signature = rsa_sign_params(PARAMS, rsa_key)
    with pytest.raises(SignatureMalformed):
        rsa_verify_params({**PARAMS, "a": float("inf")}, signature, rsa_key.public_key())
    with pytest.raises(SignatureMalformed):
        rsa_verify_params({**PARAMS, "a=b": "1"}, signature, rsa_key.public_key())
    with pytest.raises(SignatureMalformed):
        rsa_verify_params({**PARAMS, "a": "\ud800"}, signature, rsa_key.public_key())


def test_rsa_small_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        rsa_sign_params(PARAMS, small)
    with pytest.raises(ValueError, match="2048"):
        rsa_verify_params(PARAMS, "AAAA", small.public_key())


# --------------------------------------------------------------------------------------------- Ed25519

# RFC 8032 §7.1, test 1 (empty message).
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
    "d25bf5f0595bbe24655141438e7a100b"
)
CHALLENGE = b"pay_01HZX:chl_3f9a:1700000000"


@pytest.fixture(scope="module")
def device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_ed25519_rfc8032_vector() -> None:
    ed25519_verify(RFC_PUBLIC, b"", RFC_SIGNATURE)
    with pytest.raises(SignatureMismatch):
        ed25519_verify(RFC_PUBLIC, b"x", RFC_SIGNATURE)


def test_ed25519_sign_format(device_key: Ed25519PrivateKey) -> None:
    signature = ed25519_sign(device_key, CHALLENGE)
    assert len(signature) == 86
    assert "=" not in signature
    assert not set(signature) & set("+/")
    ed25519_verify(device_key.public_key(), CHALLENGE, signature)


@settings(max_examples=50)
@given(message=st.binary(max_size=512))
def test_ed25519_round_trip(device_key: Ed25519PrivateKey, message: bytes) -> None:
    signature = ed25519_sign(device_key, message)
    ed25519_verify(device_key.public_key(), message, signature)
    ed25519_verify(_raw_public(device_key), message, signature)


def test_ed25519_signature_encodings(device_key: Ed25519PrivateKey) -> None:
    raw = device_key.sign(CHALLENGE)
    public = device_key.public_key()
    for form in (
        raw,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        ed25519_verify(public, CHALLENGE, form)


def test_ed25519_public_key_forms(device_key: Ed25519PrivateKey) -> None:
    raw = _raw_public(device_key)
    pem = device_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forms: list[str | bytes] = [
        raw,
        pem,
        pem.decode(),
        "\n" + pem.decode() + "\n",
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).decode() + "\n",
    ]
    signature = ed25519_sign(device_key, CHALLENGE)
    for form in forms:
        key = load_ed25519_public_key(form)
        assert isinstance(key, Ed25519PublicKey)
        assert key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
        if isinstance(form, bytes):
            ed25519_verify(form, CHALLENGE, signature)


@settings(max_examples=50)
@given(data=st.data())
def test_ed25519_flipped_byte_fails(device_key: Ed25519PrivateKey, data: st.DataObject) -> None:
    message = data.draw(st.binary(min_size=1, max_size=128))
    signature = device_key.sign(message)
    public = device_key.public_key()
    i = data.draw(st.integers(0, len(message) - 1))
    bad_message = message[:i] + bytes([message[i] ^ data.draw(st.integers(1, 255))]) + message[i + 1 :]
    with pytest.raises(SignatureMismatch):
        ed25519_verify(public, bad_message, signature)
    j = data.draw(st.integers(0, len(signature) - 1))
    bad_signature = (
        signature[:j] + bytes([signature[j] ^ data.draw(st.integers(1, 255))]) + signature[j + 1 :]
    )
    with pytest.raises(SignatureMismatch):
        ed25519_verify(public, message, bad_signature)
    with pytest.raises(SignatureError):
        ed25519_verify(public, message, base64.urlsafe_b64encode(bad_signature).decode())


def test_ed25519_other_key_fails(device_key: Ed25519PrivateKey) -> None:
    signature = ed25519_sign(device_key, CHALLENGE)
    with pytest.raises(SignatureMismatch):
        ed25519_verify(Ed25519PrivateKey.generate().public_key(), CHALLENGE, signature)


def _other_pem(kind: str) -> bytes:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=1024)
    )
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        "",
        b"\x00" * 31,
        b"\x00" * 33,
        "not a key",
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----",
        base64.b64encode(b"\x01" * 31).decode(),
        base64.b64encode(b"\x01" * 33).decode(),
        base64.b64encode(b"\x01" * 64).decode(),
        "clé publique",
        "A" * 10_000,
        "AAAA\nAAAA",
        "ab+/cd-_" * 5 + "abc",  # mixed alphabets
        base64.b64encode(RFC_PUBLIC).decode()[:-2] + "x=",  # non-zero trailing bits
    ],
)
def test_ed25519_garbage_public_keys(garbage: str | bytes) -> None:
    with pytest.raises(SignatureMalformed):
        load_ed25519_public_key(garbage)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_ed25519_refuses_other_algorithms(kind: str) -> None:
    pem = _other_pem(kind)
    with pytest.raises(SignatureMalformed):
        load_ed25519_public_key(pem)
    with pytest.raises(SignatureMalformed):
        ed25519_verify(pem, CHALLENGE, RFC_SIGNATURE)


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        b"\x00" * 63,
        b"\x00" * 65,
        "",
        "short",
        "A" * 85,
        "A" * 87,
        "A" * 10_000,
        "签名",
        RFC_SIGNATURE.hex(),
    ],
)
def test_ed25519_malformed_signatures(signature: str | bytes) -> None:
    with pytest.raises(SignatureMalformed):
        ed25519_verify(RFC_PUBLIC, b"", signature)


def test_ed25519_non_canonical_base64_signature_is_malformed() -> None:
    canonical = base64.urlsafe_b64encode(RFC_SIGNATURE).decode().rstrip("=")
    last = canonical[-1]
    # 64 bytes -> 86 chars; the last char carries 4 bits of padding, which must be zero.
    variant = canonical[:-1] + ("B" if last == "A" else chr(ord(last) + 1))
    assert base64.urlsafe_b64decode(variant + "==") == RFC_SIGNATURE
    with pytest.raises(SignatureMalformed):
        ed25519_verify(RFC_PUBLIC, b"", variant)


@settings(max_examples=200)
@given(
    key=st.text(max_size=120) | st.binary(max_size=120),
    signature=st.text(max_size=120) | st.binary(max_size=80),
)
def test_ed25519_arbitrary_input_only_raises_signature_errors(
    key: str | bytes, signature: str | bytes
) -> None:
    try:
        public = load_ed25519_public_key(key)
    except SignatureMalformed:
        public = load_ed25519_public_key(RFC_PUBLIC)
    with pytest.raises(SignatureError):
        ed25519_verify(public, b"message", signature)
