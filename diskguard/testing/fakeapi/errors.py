"""API errors as the real API server reports them: `Status` objects with a reason and code."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error the fake API server answers with, carried as a `Status` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(kind: str, name: str) -> dict[str, Any]:
    return {"name": name, "kind": kind}


def not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{plural} "{name}" not found', details=_details(plural, name))


def already_exists(plural: str, name: str) -> ApiError:
    return ApiError(
        409, "AlreadyExists", f'{plural} "{name}" already exists', details=_details(plural, name)
    )


def conflict(plural: str, name: str, why: str | None = None) -> ApiError:
    message = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {plural} "{name}": {message}',
        details=_details(plural, name),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, name: str, message: str) -> ApiError:
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {message}',
        details={"name": name, "kind": kind},
    )


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def too_old(requested: int, current: int) -> ApiError:
    # Exactly what the real watch cache says; clients sometimes parse it.
    return expired(f"too old resource version: {requested} ({current})")


# The StatusCause client-go's reflector looks for (metav1.CauseTypeResourceVersionTooLarge).
RESOURCE_VERSION_TOO_LARGE = "ResourceVersionTooLarge"


def too_large(requested: int, current: int) -> ApiError:
    # As apiserver's storage.NewTooLargeResourceVersionError builds it: a Timeout whose
    # message is prefixed "Timeout: ", with the cause and a retry hint.
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        details={
            "causes": [
                {"reason": RESOURCE_VERSION_TOO_LARGE, "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({content_type!r}) - accepted media "
        "types include: application/json-patch+json, application/merge-patch+json, "
        "application/strategic-merge-patch+json",
    )
