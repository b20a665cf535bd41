"""Request errors of the MONAI Label app, and the HTTP status each one maps to.

MONAI Label 0.8.5 registers no exception handlers: a :class:`MONAILabelException` (unknown model, image not in the
datastore) or malformed ``params`` JSON reaches the client as ``500 Internal Server Error``. medad raises the
subclasses below for client mistakes, and :func:`install_exception_handlers` turns them (and MONAI Label's own
client-side errors) into 4xx JSON answers ``{"detail": "<what is wrong and what to do>"}``.
"""

from __future__ import annotations

import json
import logging

from monailabel.interfaces.exception import (ImageNotFoundException, LabelNotFoundException, MONAILabelError,
                                             MONAILabelException)

__all__ = ["BadRequest", "Busy", "Conflict", "Forbidden", "NotFound", "PayloadTooLarge", "RequestError",
           "UnsupportedMedia", "install_exception_handlers", "status_for"]

logger = logging.getLogger(__name__)

# MONAI Label answers these client mistakes with a 500; they are the client's fault (-> 400).
_CLIENT_500_DETAILS = {
    "Neither Image nor File not Session ID input is provided":
        "No input given: pass ?image=<image id from /datastore/?output=all>, or upload a file.",
    "DICOM SEG format is not supported in a non-DICOM datastore":
        "output=dicom_seg needs a DICOMweb datastore (--studies http://.../dicom-web); use output=image or json.",
}


class RequestError(MONAILabelException):
    """A client mistake: ``status_code`` is the HTTP status answered, the message says what to do instead."""

    status_code = 400

    def __init__(self, msg: str, status_code: int | None = None, headers: dict | None = None):
        super().__init__(MONAILabelError.INVALID_INPUT, msg)
        if status_code is not None:
            self.status_code = status_code
        self.headers = dict(headers or {})


class BadRequest(RequestError):
    """A request parameter is malformed (HTTP 400)."""

    status_code = 400


class Forbidden(RequestError):
    """The request is understood but not allowed (HTTP 403), e.g. deleting a file of the user's studies folder."""

    status_code = 403


class NotFound(RequestError):
    """The requested model, image, label or strategy does not exist (HTTP 404)."""

    status_code = 404


class Conflict(RequestError):
    """The request conflicts with the server's state (HTTP 409), e.g. a refused site checkpoint."""

    status_code = 409


class PayloadTooLarge(RequestError):
    """An upload is larger than ``--conf max_upload_mb`` (HTTP 413)."""

    status_code = 413


class UnsupportedMedia(RequestError):
    """An upload is not a file type the endpoint takes, or not readable as one (HTTP 415)."""

    status_code = 415


class Busy(RequestError):
    """The inference queue is full (HTTP 503 with ``Retry-After``)."""

    status_code = 503


def status_for(exc: Exception) -> int:
    """HTTP status for an exception raised while serving a request (500 for anything unexpected)."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, json.JSONDecodeError):
        return 400
    if isinstance(exc, MONAILabelException):
        if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
            return 404
        if exc.error == MONAILabelError.INVALID_INPUT:
            return 400
    return 500


def install_exception_handlers(app) -> None:
    """Register the 4xx handlers on a FastAPI ``app`` (idempotent)."""
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if getattr(app.state, "medad_handlers", False):
        return

    async def on_monailabel_error(request, exc):
        status = status_for(exc)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.msg)
        return JSONResponse(status_code=status, content={"detail": exc.msg, "error": exc.error.value},
                            headers=getattr(exc, "headers", None) or None)

    async def on_bad_json(request, exc):
        return JSONResponse(status_code=400, content={
            "detail": f"'params' is not valid JSON ({exc.msg} at character {exc.pos}). Send a JSON object, "
                      "e.g. params={\"result_extension\": \".nrrd\", \"result_dtype\": \"uint8\"}."})

    async def on_http_error(request, exc):
        if exc.status_code == 500 and isinstance(exc.detail, str) and exc.detail in _CLIENT_500_DETAILS:
            return JSONResponse(status_code=400, content={"detail": _CLIENT_500_DETAILS[exc.detail]})
        return await http_exception_handler(request, exc)

    app.add_exception_handler(MONAILabelException, on_monailabel_error)
    app.add_exception_handler(json.JSONDecodeError, on_bad_json)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.state.medad_handlers = True
