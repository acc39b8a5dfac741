"""The one exception tree of the server. It knows nothing about HTTP.

::

    VoidRunError                      message + optional details
     ├── InvalidInputError            the request asks for something malformed
     │    └── InvalidStateError       valid request, wrong lifecycle state for it
     ├── AuthenticationError          no key, unknown key, inactive key
     ├── PermissionDeniedError        authenticated but not allowed
     │    └── QuotaExceededError      the org would go over one of its quotas
     ├── NotFoundError                unknown id (or another org's id: indistinguishable)
     ├── ConflictError                clashes with existing state
     ├── PayloadTooLargeError         body over a configured limit
     ├── UriTooLongError              request target over a configured limit
     ├── InsufficientStorageError     a disk or quota is full
     ├── SandboxUnavailableError      the sandbox/agent did not answer
     │    └── UpstreamError           a server in the sandbox answered a proxied request badly
     ├── ServiceUnavailableError      a server component is not available (e.g. no driver)
     ├── OperationFailedError         a runtime operation failed on our side (driver, agent)
     ├── DeadlineExceededError        an operation ran past its deadline
     │    └── UpstreamTimeoutError    a server in the sandbox did not answer a proxied request
     ├── CapacityError                no room for more sandboxes right now
     └── TooManyConnectionsError      a tenant's share of proxied connections is in use

``api/errors.py`` maps each class to a status code in one table.
"""

from __future__ import annotations


class VoidRunError(Exception):
    message: str = "Internal error"

    def __init__(self, message: str | None = None, details: str | None = None) -> None:
        self.message = message or type(self).message
        self.details = details
        super().__init__(self.message if not details else f"{self.message}: {details}")


class InvalidInputError(VoidRunError):
    message = "Invalid request"


class InvalidStateError(InvalidInputError):
    message = "Invalid sandbox state"


class AuthenticationError(VoidRunError):
    message = "invalid or inactive API key"


class PermissionDeniedError(VoidRunError):
    message = "Access denied"


class QuotaExceededError(PermissionDeniedError):
    message = "Org quota exceeded"


class NotFoundError(VoidRunError):
    message = "Not found"


class ConflictError(VoidRunError):
    message = "Conflict"


class PayloadTooLargeError(VoidRunError):
    message = "Request body too large"


class UriTooLongError(VoidRunError):
    message = "Request URI too long"


class InsufficientStorageError(VoidRunError):
    message = "Insufficient storage"


class SandboxUnavailableError(VoidRunError):
    message = "Sandbox unavailable"


class UpstreamError(SandboxUnavailableError):
    message = "Bad response from the server in the sandbox"


class ServiceUnavailableError(VoidRunError):
    message = "Service unavailable"


class OperationFailedError(VoidRunError):
    message = "Operation failed"


class DeadlineExceededError(VoidRunError):
    message = "Operation timed out"


class UpstreamTimeoutError(DeadlineExceededError):
    message = "The server in the sandbox did not answer in time"


class CapacityError(VoidRunError):
    message = "Server at capacity"


class TooManyConnectionsError(VoidRunError):
    message = "Too many proxied connections"


class RequestTimeoutError(VoidRunError):
    message = "Request body stalled"
