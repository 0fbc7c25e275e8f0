"""Python clients of the comfyflow REST API: ``AsyncClient`` (asyncio) and ``Client`` (blocking)."""

from comfyflow.client.aio import DEFAULT_URL, AsyncClient, Page, Upload
from comfyflow.client.batches import BatchInfo, BatchItem, BatchTimeout
from comfyflow.client.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    GenerationTimeout,
    GoneError,
    JobTimeout,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UnsupportedMediaTypeError,
    ValidationFailed,
)
from comfyflow.client.sync import Client

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchInfo",
    "BatchItem",
    "BatchTimeout",
    "Client",
    "ClientError",
    "ConflictError",
    "GenerationTimeout",
    "GoneError",
    "JobTimeout",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "TransportError",
    "UnsupportedMediaTypeError",
    "Upload",
    "ValidationFailed",
]
