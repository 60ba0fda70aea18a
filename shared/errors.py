"""Typed domain errors shared by the library and both services.

Every error carries the HTTP status it maps to, so a service renders it once
(see :mod:`service_core.problems`) and the library stays free of web concerns::

    SplitInferError                     500  base class
    ├── ModelFailure                    500  our model failed on valid input (a typed 500: ours)
    ├── BadRequest                      400  request is malformed
    │   └── MalformedPayload            400  wire payload cannot be parsed
    ├── Unauthorized                    401  missing or wrong bearer token
    ├── RequestTimeout                  408  the request body did not arrive in time
    ├── ModelMismatch                   409  payload for another model, weights or cut
    ├── PayloadTooLarge                 413  body, tensor or image over a limit
    ├── MisdirectedRequest              421  a Host name the service does not answer (DNS rebinding)
    ├── RequestHeadersTooLarge          431  request head (line and headers) over a limit
    ├── UnsupportedMediaType            415  content type, image format, codec or dtype
    ├── UnprocessableContent            422  well-formed but unusable
    │   ├── InvalidTensor               422  shape, element count or values wrong
    │   │   └── NonFiniteOutput         422  finite activations the tail overflows on (NaN/inf logits)
    │   └── InvalidImage                422  undecodable, truncated or empty image
    ├── BadGateway                      502  the cloud answered with something unusable
    │   └── PayloadRefused              502  the cloud (up) refused the payload sent (400, 409, 413, 415, 422)
    │       └── CloudModelMismatch      502  the cloud serves another model, weights or cuts (its 409, at the edge)
    ├── ServiceUnavailable              503  not ready, overloaded or peer unreachable
    │   ├── CloudUnavailable            503  the cloud cannot be reached
    │   └── EdgeOverloaded              503  the edge's own compute did not finish in time
    ├── CloudTimeout                    504  the cloud did not answer in time
    └── ClientClosedRequest             499  the client went away before its request was read
"""

from __future__ import annotations

__all__ = [
    "BadGateway",
    "BadRequest",
    "CloudModelMismatch",
    "CloudTimeout",
    "ClientClosedRequest",
    "CloudUnavailable",
    "EdgeOverloaded",
    "InvalidImage",
    "InvalidTensor",
    "MalformedPayload",
    "ModelFailure",
    "MisdirectedRequest",
    "ModelMismatch",
    "NonFiniteOutput",
    "PayloadRefused",
    "PayloadTooLarge",
    "RequestHeadersTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "SplitInferError",
    "Unauthorized",
    "UnprocessableContent",
    "UnsupportedMediaType",
]


class SplitInferError(Exception):
    """Base of every error this project raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal-error"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(SplitInferError):
    status = 400
    title = "Bad request"
    slug = "bad-request"


class MalformedPayload(BadRequest):
    title = "Malformed wire payload"
    slug = "malformed-payload"


class Unauthorized(SplitInferError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class ModelMismatch(SplitInferError):
    status = 409
    title = "Model mismatch"
    slug = "model-mismatch"


class PayloadTooLarge(SplitInferError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class MisdirectedRequest(SplitInferError):
    status = 421
    title = "Misdirected request"
    slug = "misdirected-request"


class RequestHeadersTooLarge(SplitInferError):
    status = 431
    title = "Request header fields too large"
    slug = "request-header-fields-too-large"


class UnsupportedMediaType(SplitInferError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class UnprocessableContent(SplitInferError):
    status = 422
    title = "Unprocessable content"
    slug = "unprocessable-content"


class InvalidTensor(UnprocessableContent):
    title = "Invalid tensor"
    slug = "invalid-tensor"


class InvalidImage(UnprocessableContent):
    title = "Invalid image"
    slug = "invalid-image"


class BadGateway(SplitInferError):
    status = 502
    title = "Bad gateway"
    slug = "bad-gateway"


class PayloadRefused(BadGateway):
    """The cloud answered that it cannot use the payload it was sent: it is up (a circuit breaker records no
    failure), and the client gets a 502 naming the cloud's reason."""


class CloudModelMismatch(PayloadRefused):
    """The cloud refused the edge's payload as one for another model, weights or cut (its 409): the two
    services disagree, which the edge's client cannot fix (a 502, not the 409 the cloud sent the edge)."""

    title = "Cloud model mismatch"
    slug = "cloud-model-mismatch"


class ServiceUnavailable(SplitInferError):
    status = 503
    title = "Service unavailable"
    slug = "service-unavailable"


class CloudUnavailable(ServiceUnavailable):
    title = "Cloud unavailable"
    slug = "cloud-unavailable"


class CloudTimeout(SplitInferError):
    status = 504
    title = "Cloud timeout"
    slug = "cloud-timeout"


class EdgeOverloaded(ServiceUnavailable):
    title = "Edge overloaded"
    slug = "edge-overloaded"


class RequestTimeout(SplitInferError):
    status = 408
    title = "Request timeout"
    slug = "request-timeout"


class ClientClosedRequest(SplitInferError):
    """Not an answer anyone reads: the status the access log and metrics record for a client that left."""

    status = 499
    title = "Client closed request"
    slug = "client-closed-request"


class ModelFailure(SplitInferError):
    """The model failed on input that passed every check: our failure, not the client's."""

    status = 500
    title = "Model failure"
    slug = "model-failure"


class NonFiniteOutput(InvalidTensor):
    """Finite activations that the tail turns into NaN or infinite logits (3e38, say). No head produces them
    from an image, and the tail runs in float32 or bfloat16 (float32's range), so it is the input's fault."""

    title = "Non-finite model output"
    slug = "non-finite-output"
