"""Self-tests for the reference E2EE client crypto (no server involved).

These pin the byte layouts of contract section F so that server tests built on
tests/support/e2ee_crypto.py exercise exactly what the real client sends.
"""

from __future__ import annotations

import base64
import re
import uuid
import zlib

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from support.e2ee_crypto import (
    ARGON2_MEMORY_KB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    DeviceKeys,
    activation_proof,
    activation_proof_key,
    aes_gcm_open,
    aes_gcm_seal,
    approval_payload_v1,
    approval_payload_v2,
    b64d,
    b64e,
    decrypt_record,
    derive_recovery_kek,
    encrypt_record,
    fingerprint_of,
    generate_recovery_code,
    normalize_recovery_code,
    random_umk,
    self_wrap_umk,
    sign_p1363,
    unwrap_recovery_blob,
    unwrap_umk,
    verify_p1363,
    wrap_umk_for_device,
    wrap_umk_for_recovery,
)

FINGERPRINT_RE = re.compile(r"^[0-9A-F]{4}(-[0-9A-F]{4}){3}$")
RECOVERY_CODE_RE = re.compile(r"^[A-Z2-7]{4}(-[A-Z2-7]{2,4})+$")
# Cheap Argon2 settings so the suite stays fast; one test uses the real ones.
FAST_KDF = {"memory_kb": 256, "time_cost": 1, "parallelism": 4}

USER_ID = str(uuid.uuid4())
TEMPLATE = {"Name": "T", "Prompt": "P", "Description": "D", "StyleDescription": "S"}


# ---- keys ------------------------------------------------------------------


def test_device_keys_shape() -> None:
    device = DeviceKeys.generate()
    assert str(uuid.UUID(device.device_id)) == device.device_id  # lowercase D form
    for pub in (device.agreement_public_b64, device.signing_public_b64):
        raw = base64.b64decode(pub)
        assert len(raw) == 65
        assert raw[0] == 0x04
    assert device.agreement_public_b64 != device.signing_public_b64
    assert DeviceKeys.generate("fixed-id").device_id == "fixed-id"


def test_fingerprint_is_of_agreement_key() -> None:
    device = DeviceKeys.generate()
    assert FINGERPRINT_RE.match(device.fingerprint)
    assert device.fingerprint == fingerprint_of(device.agreement_public_b64)
    assert device.fingerprint != fingerprint_of(device.signing_public_b64)


def test_fingerprint_known_vector() -> None:
    # SHA256(65 zero bytes) = 98ce42deef51d402...; pins which bytes and the casing.
    assert fingerprint_of(b64e(bytes(65))) == "98CE-42DE-EF51-D402"


# ---- AES-GCM ---------------------------------------------------------------


def test_aes_gcm_round_trip_and_layout() -> None:
    key = random_umk()
    blob = aes_gcm_seal(key, b"hello", b"aad")
    assert len(b64d(blob)) == 12 + 5 + 16
    assert aes_gcm_open(key, blob, b"aad") == b"hello"
    with pytest.raises(InvalidTag):
        aes_gcm_open(key, blob, b"other")
    with pytest.raises(InvalidTag):
        aes_gcm_open(random_umk(), blob, b"aad")


def test_random_umk_is_32_bytes() -> None:
    umk = random_umk()
    assert len(umk) == 32
    assert umk != random_umk()


# ---- UMK wrapping ----------------------------------------------------------


def test_self_wrap_round_trip_and_size() -> None:
    device = DeviceKeys.generate()
    umk = random_umk()
    ciphertext, salt = self_wrap_umk(device, umk)
    assert len(b64d(ciphertext)) == 60  # 12 nonce + 32 UMK + 16 tag
    assert len(b64d(salt)) == 32
    assert unwrap_umk(device, device.agreement_public_b64, ciphertext, salt) == umk


def test_second_device_unwraps_umk_wrapped_by_first() -> None:
    approver = DeviceKeys.generate()
    joiner = DeviceKeys.generate()
    umk = random_umk()
    ciphertext, salt = wrap_umk_for_device(
        approver, joiner.device_id, joiner.agreement_public_b64, umk
    )
    assert len(b64d(ciphertext)) == 60
    # The joiner uses the approver's (createdByDeviceId's) agreement key.
    assert unwrap_umk(joiner, approver.agreement_public_b64, ciphertext, salt) == umk


def test_wrapped_umk_is_bound_to_target_device_and_sender() -> None:
    approver = DeviceKeys.generate()
    joiner = DeviceKeys.generate()
    umk = random_umk()
    ciphertext, salt = wrap_umk_for_device(
        approver, joiner.device_id, joiner.agreement_public_b64, umk
    )
    # Same keys but a different device id changes HKDF info and AAD.
    impostor = DeviceKeys(str(uuid.uuid4()), joiner.agreement_key, joiner.signing_key)
    with pytest.raises(InvalidTag):
        unwrap_umk(impostor, approver.agreement_public_b64, ciphertext, salt)
    # Wrong sender key gives a different ECDH secret.
    with pytest.raises(InvalidTag):
        unwrap_umk(joiner, DeviceKeys.generate().agreement_public_b64, ciphertext, salt)


def test_bad_public_key_rejected() -> None:
    device = DeviceKeys.generate()
    # The client requires the 65-byte 0x04 form; a compressed point is refused.
    compressed = device.agreement_key.public_key().public_bytes(
        Encoding.X962, PublicFormat.CompressedPoint
    )
    with pytest.raises(ValueError):
        device.shared_secret(b64e(compressed))


# ---- approval signatures ---------------------------------------------------


def test_approval_payload_v1_exact() -> None:
    assert approval_payload_v1("c2Vzc2lvbi0x", "dev-1", "QUJD") == b"c2Vzc2lvbi0x:dev-1:QUJD"


def test_approval_payload_v2_exact() -> None:
    payload = approval_payload_v2("c2Vzc2lvbi0x", "dev-1", "QUJD", "V1JBUA==", "U0FMVA==")
    assert payload == b"pia-approval-v2:c2Vzc2lvbi0x:dev-1:QUJD:V1JBUA==:U0FMVA=="


def test_p1363_signature_round_trip() -> None:
    approver = DeviceKeys.generate()
    joiner = DeviceKeys.generate()
    ciphertext, salt = wrap_umk_for_device(
        approver, joiner.device_id, joiner.agreement_public_b64, random_umk()
    )
    payload = approval_payload_v2(
        "session", joiner.device_id, joiner.agreement_public_b64, ciphertext, salt
    )
    sig = sign_p1363(approver.signing_key, payload)
    assert len(b64d(sig)) == 64
    assert verify_p1363(approver.signing_public_b64, payload, sig)
    assert approver.sign(payload) != sig  # ECDSA is randomized, both verify
    assert verify_p1363(approver.signing_public_b64, payload, approver.sign(payload))


def test_p1363_rejects_tampering_and_wrong_key() -> None:
    device = DeviceKeys.generate()
    payload = approval_payload_v1("s", "t", "k")
    sig = device.sign(payload)
    assert not verify_p1363(device.signing_public_b64, payload + b"x", sig)
    assert not verify_p1363(DeviceKeys.generate().signing_public_b64, payload, sig)
    # Verifying against the agreement key (wrong key type in the list) must fail.
    assert not verify_p1363(device.agreement_public_b64, payload, sig)
    flipped = bytearray(b64d(sig))
    flipped[10] ^= 0x01
    assert not verify_p1363(device.signing_public_b64, payload, b64e(bytes(flipped)))


def test_p1363_rejects_der_and_garbage() -> None:
    device = DeviceKeys.generate()
    payload = b"data"
    der = device.signing_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    assert not verify_p1363(device.signing_public_b64, payload, b64e(der))
    assert not verify_p1363(device.signing_public_b64, payload, "not base64!!")
    assert not verify_p1363("AAAA", payload, device.sign(payload))


# ---- recovery ---------------------------------------------------------------


def test_recovery_code_format() -> None:
    for _ in range(50):
        code = generate_recovery_code()
        assert RECOVERY_CODE_RE.match(code)
        assert len(normalize_recovery_code(code)) == 26
        assert [len(g) for g in code.split("-")] == [4, 4, 4, 4, 4, 4, 2]


def test_normalize_recovery_code() -> None:
    assert normalize_recovery_code("abcd-ef23-45") == "ABCDEF2345"


def test_recovery_kek_normalizes_code() -> None:
    salt = bytes(32)
    code = generate_recovery_code()
    kek = derive_recovery_kek(code, salt, **FAST_KDF)
    assert len(kek) == 32
    assert kek == derive_recovery_kek(code.lower().replace("-", ""), salt, **FAST_KDF)
    assert kek != derive_recovery_kek(code, bytes([1]) * 32, **FAST_KDF)


def test_recovery_wrap_round_trip_fast_params() -> None:
    code = generate_recovery_code()
    umk = random_umk()
    blob = wrap_umk_for_recovery(code, umk, **FAST_KDF)
    assert blob["kdfMemoryCostKb"] == FAST_KDF["memory_kb"]
    assert blob["kdfTimeCost"] == FAST_KDF["time_cost"]
    assert blob["wrapVersion"] == 1
    assert blob["umkVersion"] == 1
    assert blob["createdAt"].endswith("Z")
    assert len(b64d(blob["kdfSalt"])) == 32
    assert len(b64d(blob["ciphertext"])) == 60
    assert unwrap_recovery_blob(code, blob) == umk
    assert unwrap_recovery_blob(code.lower(), blob) == umk
    with pytest.raises(InvalidTag):
        unwrap_recovery_blob(generate_recovery_code(), blob)


def test_recovery_unwrap_accepts_pascal_case_blob() -> None:
    code = generate_recovery_code()
    umk = random_umk()
    blob = wrap_umk_for_recovery(code, umk, **FAST_KDF)
    pascal = {k[0].upper() + k[1:]: v for k, v in blob.items()}
    assert unwrap_recovery_blob(code, pascal) == umk


def test_recovery_wrap_default_params() -> None:
    code = generate_recovery_code()
    umk = random_umk()
    blob = wrap_umk_for_recovery(code, umk)
    assert set(blob) == {
        "ciphertext",
        "kdfSalt",
        "kdfMemoryCostKb",
        "kdfTimeCost",
        "kdfParallelism",
        "wrapVersion",
        "umkVersion",
        "createdAt",
    }
    assert blob["kdfMemoryCostKb"] == ARGON2_MEMORY_KB == 65536
    assert blob["kdfTimeCost"] == ARGON2_TIME_COST == 3
    assert blob["kdfParallelism"] == ARGON2_PARALLELISM == 4
    assert unwrap_recovery_blob(code, blob) == umk


# ---- proof of possession ---------------------------------------------------


def test_activation_proof() -> None:
    umk = random_umk()
    key = activation_proof_key(umk)
    assert len(key) == 32
    proof = activation_proof(umk, "c2Vzc2lvbi0x")
    assert len(b64d(proof)) == 32
    assert proof == activation_proof(umk, "c2Vzc2lvbi0x")
    assert proof != activation_proof(umk, "c2Vzc2lvbi0y")
    assert proof != activation_proof(random_umk(), "c2Vzc2lvbi0x")


def test_activation_proof_matches_independent_computation() -> None:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    umk = bytes(range(32))
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"activation", info=b"pia-activation-proof-v1"
    ).derive(umk)
    assert activation_proof_key(umk) == key
    expected = base64.b64encode(hmac.new(key, b"sid", hashlib.sha256).digest()).decode()
    assert activation_proof(umk, "sid") == expected


# ---- record encryption -----------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_record_round_trip(compress: bool) -> None:
    umk = random_umk()
    entity_id = str(uuid.uuid4())
    enc, wrapped = encrypt_record(umk, USER_ID, "template", entity_id, TEMPLATE, compress)
    assert decrypt_record(umk, USER_ID, "template", entity_id, enc, wrapped) == TEMPLATE
    assert len(b64d(wrapped)) == 60  # wrapped DEK: 12 + 32 + 16


def test_record_compressed_marker_and_legacy_format() -> None:
    # Decrypt the inner layer by hand to check the on-the-wire plaintext format.
    umk = random_umk()
    entity_id = str(uuid.uuid4())
    aad = f"pia-e2ee-v1:{USER_ID}:template:{entity_id}".encode()
    dek_aad = f"pia-dek-wrap-v1:template:{entity_id}".encode()

    enc, wrapped = encrypt_record(umk, USER_ID, "template", entity_id, TEMPLATE, compress=True)
    inner = aes_gcm_open(aes_gcm_open(umk, wrapped, dek_aad), enc, aad)
    assert inner[0] == 0x01
    assert zlib.decompress(inner[1:]).startswith(b'{"Name":')

    enc, wrapped = encrypt_record(umk, USER_ID, "template", entity_id, TEMPLATE)
    inner = aes_gcm_open(aes_gcm_open(umk, wrapped, dek_aad), enc, aad)
    assert inner == b'{"Name":"T","Prompt":"P","Description":"D","StyleDescription":"S"}'


def test_record_fresh_dek_each_call() -> None:
    umk = random_umk()
    entity_id = str(uuid.uuid4())
    first = encrypt_record(umk, USER_ID, "memory", entity_id, {"Type": 0})
    second = encrypt_record(umk, USER_ID, "memory", entity_id, {"Type": 0})
    assert first[0] != second[0]
    assert first[1] != second[1]


def test_record_wrong_aad_fails() -> None:
    umk = random_umk()
    entity_id = str(uuid.uuid4())
    enc, wrapped = encrypt_record(umk, USER_ID, "template", entity_id, TEMPLATE)
    with pytest.raises(InvalidTag):  # wrong entity id: the DEK unwrap fails first
        decrypt_record(umk, USER_ID, "template", str(uuid.uuid4()), enc, wrapped)
    with pytest.raises(InvalidTag):  # wrong entity type
        decrypt_record(umk, USER_ID, "provider", entity_id, enc, wrapped)
    with pytest.raises(InvalidTag):  # wrong user id: only the record AAD has it
        decrypt_record(umk, str(uuid.uuid4()), "template", entity_id, enc, wrapped)
    with pytest.raises(InvalidTag):  # wrong UMK
        decrypt_record(random_umk(), USER_ID, "template", entity_id, enc, wrapped)


def test_record_sample_aad_from_client_tests() -> None:
    # The client's CryptoServiceTests use this exact AAD string.
    umk = random_umk()
    enc, wrapped = encrypt_record(umk, "user123", "template", "abc", TEMPLATE)
    dek = aes_gcm_open(umk, wrapped, b"pia-dek-wrap-v1:template:abc")
    assert aes_gcm_open(dek, enc, b"pia-e2ee-v1:user123:template:abc")


def test_settings_record_entity_id() -> None:
    umk = random_umk()
    payload = {"Theme": 1, "ModeProviderDefaults": {"0": str(uuid.uuid4())}}
    enc, wrapped = encrypt_record(umk, USER_ID, "settings", "user-settings", payload, True)
    assert decrypt_record(umk, USER_ID, "settings", "user-settings", enc, wrapped) == payload
