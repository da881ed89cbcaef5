"""E2EE errors, in the shared error shape. Codes the client reacts to are fixed by its code."""

from __future__ import annotations

from pia_server.core.errors import ApiError, validation_error

# The early onboarding view model re-registers when the message contains "expired" or "Invalid".
INVALID_SESSION_MESSAGE = "Invalid or expired onboarding session"


def field_error(field: str, message: str) -> ApiError:
    return validation_error([{"field": field, "message": message}])


def device_not_found() -> ApiError:
    # Also for another user's device: never confirm that someone else's id exists.
    return ApiError(
        404, "device_not_found", "No device with this id is registered to this account."
    )


def wrapped_umk_not_found() -> ApiError:
    return ApiError(404, "wrapped_umk_not_found", "There is no wrapped key for this device.")


def recovery_not_found() -> ApiError:
    return ApiError(404, "recovery_not_found", "No recovery copy of the key has been stored.")


def recovery_not_set_up() -> ApiError:
    return ApiError(
        409, "recovery_not_set_up", "Store the recovery copy of the key before this step."
    )


def recovery_key_locked() -> ApiError:
    return ApiError(
        409,
        "recovery_key_locked",
        "The recovery copy is locked because a recovery proof key is on file.",
    )


def proof_key_conflict() -> ApiError:
    return ApiError(409, "proof_key_conflict", "A different recovery proof key is already on file.")


def invalid_onboarding_session() -> ApiError:
    return ApiError(400, "invalid_onboarding_session", INVALID_SESSION_MESSAGE)


def invalid_signature() -> ApiError:
    return ApiError(
        400, "invalid_signature", "The approval signature does not verify with the approver's key."
    )


def invalid_proof() -> ApiError:
    return ApiError(400, "invalid_proof", "The proof of possession of the key is not valid.")


def approver_not_active() -> ApiError:
    return ApiError(403, "approver_not_active", "Only an active device can approve another one.")


def device_not_active() -> ApiError:
    return ApiError(403, "device_not_active", "This device is not active.")


def device_not_pending() -> ApiError:
    return ApiError(409, "device_not_pending", "This device is not waiting for approval.")


def device_keys_changed() -> ApiError:
    return ApiError(
        409,
        "device_keys_changed",
        "This active device is registered with other keys; revoke it and register it again.",
    )


def activation_rate_limited(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"Too many recovery attempts; try again in {retry_after} seconds.",
        extra={"retryAfter": retry_after},
        headers={"Retry-After": str(retry_after)},
    )
