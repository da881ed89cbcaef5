"""E2EE routes, in both path styles: the API reference's and the desktop client's.

They sit at the host root (the early client drops any path prefix of the server URL). Every
route uses the ``global`` rate-limit policy; recovery activation has its own limit on top.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from pia_server.auth.dependencies import CurrentUser
from pia_server.core.bodies import openapi_body, read_model
from pia_server.core.context import AppContext, get_context
from pia_server.core.ratelimit import rate_limit
from pia_server.core.responses import model_response
from pia_server.e2ee import errors
from pia_server.e2ee.schemas import (
    MAX_DEVICE_ID,
    DeviceApprovalRequest,
    DeviceInfo,
    DeviceListResponse,
    DeviceRegistrationRequest,
    DeviceRegistrationResponse,
    DeviceRevokeRequest,
    DeviceStatusResponse,
    E2eeStatusResponse,
    ProofKeyRequest,
    RecoveryActivationRequest,
    RecoveryWrappedUmkBlob,
    WrappedUmkBlob,
    WrappedUmkUpload,
)
from pia_server.e2ee.service import E2eePolicy, E2eeService

router = APIRouter(prefix="/api/e2ee", tags=["e2ee"], dependencies=[Depends(rate_limit("global"))])

# The client's name in the path; checked by _device_id so that errors name "deviceId".
DevicePath = Annotated[str, Path(alias="deviceId")]


async def startup(ctx: AppContext) -> None:
    ctx.domains["e2ee"] = E2eeService(ctx.db, E2eePolicy())


def _service(request: Request) -> E2eeService:
    return get_context(request).domain("e2ee", E2eeService)


def _device_id(value: str, field: str = "deviceId") -> str:
    if not value or len(value) > MAX_DEVICE_ID:
        raise errors.field_error(field, f"must be 1 to {MAX_DEVICE_ID} characters")
    return value


# ---- devices ---------------------------------------------------------------


@router.post(
    "/devices/register",
    response_model=DeviceRegistrationResponse,
    openapi_extra=openapi_body(DeviceRegistrationRequest),
    summary="Register a device (Pending, or Active when it is the account's first)",
)
async def register_device(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, DeviceRegistrationRequest)
    ctx = get_context(request)
    result = await _service(request).register(user.id, body, ctx.origin(request))
    return model_response(result)


@router.get("/devices", response_model=DeviceListResponse, summary="List the user's devices")
async def list_devices(request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).list_devices(user.id))


@router.post(
    "/devices/approve",
    response_model=DeviceStatusResponse,
    openapi_extra=openapi_body(DeviceApprovalRequest),
    summary="Approve a pending device with a signed, wrapped UMK",
)
async def approve_device(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, DeviceApprovalRequest)
    ctx = get_context(request)
    return model_response(await _service(request).approve(user.id, body, ctx.origin(request)))


@router.post(
    "/devices/revoke",
    response_model=DeviceInfo,
    openapi_extra=openapi_body(DeviceRevokeRequest),
    summary="Revoke a device (API reference style)",
)
async def revoke_device(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, DeviceRevokeRequest)
    ctx = get_context(request)
    return model_response(
        await _service(request).revoke(user.id, body.device_id, ctx.origin(request))
    )


@router.post(
    "/devices/{deviceId}/revoke",
    response_model=DeviceInfo,
    summary="Revoke a device (client style, empty body)",
)
async def revoke_device_by_path(
    device_id: DevicePath, request: Request, user: CurrentUser
) -> Response:
    # The client posts no body at all (Content-Length 0, no Content-Type): nothing to read.
    ctx = get_context(request)
    return model_response(
        await _service(request).revoke(user.id, _device_id(device_id), ctx.origin(request))
    )


@router.get(
    "/devices/{deviceId}/status",
    response_model=DeviceStatusResponse,
    summary="A device's status (404 when unknown)",
)
async def device_status(device_id: DevicePath, request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).device_status(user.id, _device_id(device_id)))


# ---- wrapped UMKs ------------------------------------------------------------


@router.get(
    "/devices/wrapped-umk/{deviceId}",
    response_model=WrappedUmkBlob,
    summary="Fetch a device's wrapped UMK (API reference style)",
)
async def get_wrapped_umk(device_id: DevicePath, request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).get_wrapped_umk(user.id, _device_id(device_id)))


@router.get(
    "/devices/{deviceId}/wrapped-umk",
    response_model=WrappedUmkBlob,
    summary="Fetch a device's wrapped UMK (client style)",
)
async def get_wrapped_umk_by_path(
    device_id: DevicePath, request: Request, user: CurrentUser
) -> Response:
    return model_response(await _service(request).get_wrapped_umk(user.id, _device_id(device_id)))


@router.put(
    "/devices/wrapped-umk",
    response_model=WrappedUmkBlob,
    openapi_extra=openapi_body(WrappedUmkUpload),
    summary="Store an active device's self-wrapped UMK (API reference style)",
)
async def put_wrapped_umk(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, WrappedUmkUpload)
    if body.device_id is None:
        raise errors.field_error("deviceId", "Field required")
    ctx = get_context(request)
    result = await _service(request).store_self_wrap(
        user.id, body.device_id, body, ctx.origin(request)
    )
    return model_response(result)


@router.post(
    "/devices/{deviceId}/wrapped-umk",
    response_model=WrappedUmkBlob,
    openapi_extra=openapi_body(WrappedUmkUpload),
    summary="Store an active device's self-wrapped UMK (client style)",
)
async def post_wrapped_umk(device_id: DevicePath, request: Request, user: CurrentUser) -> Response:
    device_id = _device_id(device_id)
    body = await read_model(request, WrappedUmkUpload)
    if body.device_id is not None and body.device_id != device_id:
        raise errors.field_error("deviceId", "must match the device id in the path")
    ctx = get_context(request)
    result = await _service(request).store_self_wrap(user.id, device_id, body, ctx.origin(request))
    return model_response(result)


# ---- status and recovery -----------------------------------------------------


@router.get("/status", response_model=E2eeStatusResponse, summary="The account's E2EE state")
async def e2ee_status(request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).status(user.id))


@router.post(
    "/recovery/wrapped-umk",
    response_model=RecoveryWrappedUmkBlob,
    openapi_extra=openapi_body(RecoveryWrappedUmkBlob),
    summary="Store the recovery-code-wrapped UMK",
)
async def post_recovery(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, RecoveryWrappedUmkBlob)
    ctx = get_context(request)
    return model_response(
        await _service(request).store_recovery(user.id, body, ctx.origin(request))
    )


@router.get(
    "/recovery/wrapped-umk",
    response_model=RecoveryWrappedUmkBlob,
    summary="Fetch the recovery-code-wrapped UMK",
)
async def get_recovery(request: Request, user: CurrentUser) -> Response:
    return model_response(await _service(request).get_recovery(user.id))


@router.put(
    "/recovery/proof-key",
    status_code=204,
    response_class=Response,
    openapi_extra=openapi_body(ProofKeyRequest),
    summary="Store the recovery proof key (once; after the recovery copy)",
)
async def put_proof_key(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, ProofKeyRequest)
    ctx = get_context(request)
    await _service(request).store_proof_key(user.id, body, ctx.origin(request))
    return Response(status_code=204)


@router.post(
    "/recovery/activate",
    response_model=DeviceStatusResponse,
    openapi_extra=openapi_body(RecoveryActivationRequest),
    summary="Activate a pending device with the recovery code's proof",
)
async def activate(request: Request, user: CurrentUser) -> Response:
    body = await read_model(request, RecoveryActivationRequest)
    ctx = get_context(request)
    return model_response(
        await _service(request).activate_by_recovery(user.id, body, ctx.origin(request))
    )
