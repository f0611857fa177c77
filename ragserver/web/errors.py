"""Every failure answers with a clear message: JSON under /api/, OpenAI's error object under
/v1/, HTML elsewhere, no tracebacks."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from flask import abort, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from ..storage import BackendUnavailable, database_errors
from ..embedder import EmbedderError
from ..llm import LLMError

MESSAGES = {
    404: "There is nothing at {path}.",
    405: "{method} is not allowed at {path}.",
    413: "The request is too large: the limit is {limit:,} bytes.",
}

# OpenAI's error object: the type by status, and a code clients may switch on.
OPENAI_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


def register(app) -> None:
    """Install the error handlers on the app."""
    app.before_request(refuse_undecodable)
    app.register_error_handler(HTTPException, _http_error)
    for error in (*database_errors(), BackendUnavailable):
        app.register_error_handler(error, _unavailable("The posts cannot be read right now"))
    app.register_error_handler(EmbedderError, _unavailable("The search model cannot be loaded"))
    app.register_error_handler(LLMError, _unavailable("The answer model cannot be loaded"))
    app.register_error_handler(Exception, _unexpected)


def refuse_undecodable() -> None:
    """400 for a query string or form that is not UTF-8.

    Werkzeug would keep such bytes as literal %XX text, and a question would then be
    answered about "%FF"; a clear refusal is better.
    """
    raw = [request.query_string]
    if request.mimetype == "application/x-www-form-urlencoded":
        raw.append(request.get_data(cache=True))  # the form is parsed from this cached copy
    for data in raw:
        try:
            unquote_to_bytes(data.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            abort(400, "The request is not valid UTF-8 text.")


def _message(error: HTTPException) -> str:
    template = MESSAGES.get(error.code or 500)
    if template is None:
        return error.description or error.name
    limit = request.max_content_length or 0
    return template.format(path=request.path, method=request.method, limit=limit)


def openai_error_object(message: str, status: int, code: str | None = None,
                        param: str | None = None) -> dict:
    """OpenAI's error object: {"message", "type", "param", "code"}."""
    kind, default_code = OPENAI_ERRORS.get(status, ("server_error", "internal_error"))
    return {"message": message, "type": kind, "param": param, "code": code or default_code}


def openai_error(message: str, status: int, code: str | None = None, param: str | None = None):
    """{"error": <OpenAI's error object>} as a JSON response."""
    return jsonify(error=openai_error_object(message, status, code, param))


def error_response(message: str, status: int, headers=None):
    """`message` as JSON under /api/ (and for JSON clients), as OpenAI's error object under
    /v1/, else as an HTML page or fragment."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        response = openai_error(message, status)
    elif request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
        response = jsonify(error=message)
    elif getattr(request, "htmx", False):  # the fragment htmx swaps into the page
        response = render_template("chat/_error.html", message=message)
    else:
        response = render_template("error.html", message=message, status=status)
    return response, status, headers or {}


def _http_error(error: HTTPException):
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return error_response(_message(error), error.code or 500, headers)


def _unavailable(what: str):
    def handler(error: Exception):
        current_app.logger.error("%s: %s", what, error)
        # Retry-After: a missing model or a database being replaced is the operator's to fix;
        # clients should not hammer the server meanwhile.
        return error_response(f"{what} ({error}).", ServiceUnavailable.code, {"Retry-After": "30"})
    return handler


def _unexpected(error: Exception):
    current_app.logger.exception("unexpected error on %s %s", request.method, request.path)
    return error_response("Something went wrong on the server; the error has been logged.",
                          InternalServerError.code)
