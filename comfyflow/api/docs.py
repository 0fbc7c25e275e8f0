"""The OpenAPI document, built from the same pydantic models that validate requests, and a docs page."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, file, html, json

from comfyflow import __version__
from comfyflow.models import JOB_REQUEST, Job

bp = Blueprint("docs")
REF = "#/components/schemas/{model}"

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
                "request_id": {"type": ["string", "null"]},
                "timestamp": {"type": "string"},
            },
        }
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(c): {"description": "error", **ref} for c in codes}


def _job_response(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
EVENT_ID = {"type": "string", "pattern": "^[0-9]{1,19}-[0-9]{1,19}$", "description": "e.g. 1700000000000-0"}
#: One Server-Sent Event (OpenAPI 3.1: the schema of a text/event-stream describes each event).
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "description": "Send it back as Last-Event-ID to resume after this event."},
        "event": {"type": "string", "enum": ["status", "progress", "artifact", "done", "log"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
IDEMPOTENCY_SCOPE = (
    "Makes a retried submission safe. The key is scoped to the credential the request is sent with: the API key "
    "(for a JWT, its jti; without one, the user). The same credential, key and body within "
    "COMFYFLOW_IDEMPOTENCY_TTL_SECONDS (24 h) answers with the original job or batch (Idempotent-Replayed: true); "
    "the same key with another body is a 422; while the first request is still being handled, a 409. Another API "
    "key, even of the same user, never replays it: the same Idempotency-Key there makes a new job."
)
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": IDEMPOTENCY_SCOPE,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
}
#: What an anonymous caller learns from /health: a word per dependency name.
HEALTH = {
    "type": "object",
    "required": ["status", "dependencies"],
    "properties": {
        "status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
        "dependencies": {"type": "object", "additionalProperties": {"type": "string",
                                                                    "enum": ["up", "degraded", "down"]}},
        "checked_at": {"type": ["string", "null"]},
    },
}  # fmt: skip
COMMON_ERRORS = (400, 401, 403, 404, 405, 413, 415, 422, 429, 503)


def _model_body(schemas: dict[str, Any], model: Any, name: str) -> dict[str, Any]:
    """A JSON request body from a pydantic model, its definitions added to the components."""
    schema = TypeAdapter(model).json_schema(ref_template=REF, mode="validation")
    schemas.update(schema.pop("$defs", {}))
    schemas[name] = schema
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _op(summary: str, ok: str, *, params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        extra_ok: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """An operation answering an object on success and the error envelope otherwise."""
    obj = {"content": {"application/json": {"schema": {"type": "object"}}}}
    responses: dict[str, Any] = {code: {"description": "success", **obj} for code in (ok, *extra_ok)}
    responses["default"] = {
        "description": "error (the envelope)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _grid_op(bid: dict[str, Any]) -> dict[str, Any]:
    """The contact sheet: a PNG, its ETag, and the query that picks axes, windows and the cell size."""
    def q(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "schema": schema, "description": desc}

    text = {"type": "string", "minLength": 1, "maxLength": 100}
    count = {"type": "integer", "minimum": 1, "maximum": 1_000_000}
    start = {"type": "integer", "minimum": 0, "maximum": 1_000_000}
    params = [bid, q("x", text, "Swept field along x (default: the first)"),
              q("y", text, "Swept field along y (default: the second)"),
              q("z", text, "A third swept field: one sheet per value (default: the third)"),
              q("z_index", start, "Which value of z"), q("fix", {"type": "string"}, "Other fields: name:index,..."),
              q("x_offset", start, "First x value"), q("x_limit", count, "How many x values"),
              q("y_offset", start, "First y value"), q("y_limit", count, "How many y values"),
              q("offset", start, "Items list: first item"), q("limit", count, "Items list: how many"),
              q("columns", count, "Items list: columns"),
              q("cell", {"type": "integer", "minimum": 16, "maximum": 512}, "Cell edge in pixels"),
              {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}]
    return {"summary": "The batch's contact sheet (PNG)", "parameters": params, "responses": {
        "200": {"description": "the sheet", "content": {"image/png": {"schema": {"type": "string",
                                                                                 "format": "binary"}}}},
        "304": {"description": "not changed since the ETag sent in If-None-Match"},
        "default": {"description": "error (the envelope)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}  # fmt: skip


def _more_paths(schemas: dict[str, Any]) -> dict[str, Any]:
    """Batches, pipelines, keys, admin and backends."""
    from comfyflow.api.admin import NewKey, NewUser, UserChange
    from comfyflow.api.backends import Registration
    from comfyflow.api.pipelines import RunRequest
    from comfyflow.core.batches import BatchRequest

    batch = _model_body(schemas, BatchRequest, "BatchRequest")
    run = _model_body(schemas, RunRequest, "PipelineRunRequest")
    user, change, key = (_model_body(schemas, m, n) for m, n in
                         ((NewUser, "NewUser"), (UserChange, "UserChange"), (NewKey, "NewKey")))  # fmt: skip
    backend = _model_body(schemas, Registration, "BackendRegistration")
    bid, rid, uid, kid, name, ident = (_path(n) for n in ("batch_id", "run_id", "user_id", "key_id", "name", "ident"))
    cursor = [{"name": "cursor", "in": "query", "schema": {"type": "string"}},
              {"name": "limit", "in": "query",
               "schema": {"type": "integer", "minimum": 1, "maximum": 100}}]  # fmt: skip
    return {
        "/api/v1/batches": {"post": _op("Submit a batch (items or a sweep)", "202", body=batch,
                                        params=[IDEMPOTENCY_HEADER]),
                            "get": _op("Your batches", "200", params=cursor)},
        "/api/v1/batches/{batch_id}": {"get": _op("A batch with its items", "200", params=[bid, *cursor]),
                                       "delete": _op("Cancel the rest of a batch", "200", params=[bid],
                                                     extra_ok=("202",))},
        "/api/v1/batches/{batch_id}/retry": {"post": _op("Re-run failed items", "202", params=[bid])},
        "/api/v1/batches/{batch_id}/grid": {"get": _grid_op(bid)},
        "/api/v1/pipelines": {"get": _op("Registered pipelines", "200")},
        "/api/v1/pipelines/{name}": {"get": _op("A pipeline and its parameters", "200", params=[name])},
        "/api/v1/pipelines/{name}/runs": {"post": _op("Start a pipeline run", "202", params=[name], body=run)},
        "/api/v1/pipeline-runs": {"get": _op("Your pipeline runs", "200", params=cursor)},
        "/api/v1/pipeline-runs/{run_id}": {"get": _op("A pipeline run with its steps", "200", params=[rid]),
                                           "delete": _op("Cancel a pipeline run", "200", params=[rid],
                                                         extra_ok=("202",))},
        "/api/v1/pipeline-runs/{run_id}/retry": {"post": _op("Retry a failed pipeline run", "202", params=[rid])},
        "/api/v1/me": {"get": _op("Who you are", "200")},
        "/api/v1/console": {"get": _op("What the web console (/ui) needs: the Prefect UI's address", "200")},
        "/api/v1/keys": {"get": _op("Your API keys", "200")},
        "/api/v1/keys/{key_id}": {"delete": _op("Revoke one of your keys", "200", params=[kid])},
        "/api/v1/admin/users": {"get": _op("Users (INTERNAL)", "200"),
                                "post": _op("Create a user (INTERNAL)", "201", body=user)},
        "/api/v1/admin/users/{user_id}": {"get": _op("A user (INTERNAL)", "200", params=[uid]),
                                          "patch": _op("Change a user (INTERNAL)", "200", params=[uid], body=change)},
        "/api/v1/admin/users/{user_id}/keys": {"get": _op("A user's keys (INTERNAL)", "200", params=[uid]),
                                               "post": _op("Create a key (INTERNAL)", "201", params=[uid], body=key)},
        "/api/v1/admin/keys": {"get": _op("All keys (INTERNAL)", "200")},
        "/api/v1/admin/keys/{key_id}": {"delete": _op("Revoke a key (INTERNAL)", "200", params=[kid])},
        "/api/v1/backends": {"get": _op("Backends with health and load (INTERNAL)", "200")},
        "/api/v1/admin/backends": {"get": _op("Backends (INTERNAL)", "200"),
                                   "post": _op("Register a backend (INTERNAL)", "201", body=backend,
                                               extra_ok=("200",))},
        "/api/v1/admin/backends/{ident}": {"get": _op("A backend (INTERNAL)", "200", params=[ident]),
                                           "delete": _op("Remove or disable a backend (INTERNAL)", "200",
                                                         params=[ident])},
    }  # fmt: skip


@cache
def openapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    req = JOB_REQUEST.json_schema(ref_template=REF, mode="validation")
    schemas.update(req.pop("$defs", {}))
    if "oneOf" in req:
        req["anyOf"] = req.pop("oneOf")
    req.pop("discriminator", None)
    schemas["JobRequest"] = req
    job = TypeAdapter(Job).json_schema(ref_template=REF, mode="serialization")
    schemas.update(job.pop("$defs", {}))
    job["additionalProperties"] = True
    schemas["Job"] = job
    json_body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
    }
    idem = IDEMPOTENCY_HEADER
    obj = {"type": "object"}
    paths: dict[str, Any] = {
        "/api/v1/jobs": {
            "post": {"summary": "Submit a job", "parameters": [idem], "requestBody": json_body,
                     "responses": {"202": _job_response("queued"), **_errors(*COMMON_ERRORS, 402, 409)}},
            "get": {"summary": "Your jobs, newest first", "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": [
                    "queued", "running", "succeeded", "failed", "canceled", "expired"]}},
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}}],
                "responses": {"200": {"description": "a page", "content": {"application/json": {"schema": obj}}},
                              **_errors(*COMMON_ERRORS)}},
        },
        "/api/v1/jobs/{job_id}": {
            "get": {"summary": "A job", "parameters": [JOB_ID],
                    "responses": {"200": _job_response("the job"), **_errors(*COMMON_ERRORS)}},
            "delete": {"summary": "Cancel a job", "parameters": [JOB_ID],
                       "responses": {"200": _job_response("canceled or finished"),
                                     "202": _job_response("cancel requested"), **_errors(*COMMON_ERRORS)}},
        },
        "/api/v1/jobs/{job_id}/retry": {
            "post": {"summary": "Retry a failed or canceled job", "parameters": [JOB_ID],
                     "responses": {"202": _job_response("queued again"), **_errors(*COMMON_ERRORS, 409)}},
        },
        "/api/v1/jobs/{job_id}/events": {
            "get": {"summary": "Progress as Server-Sent Events (Last-Event-ID resumes)", "parameters": [JOB_ID,
                    {"name": "Last-Event-ID", "in": "header", "schema": EVENT_ID},
                    {"name": "last_event_id", "in": "query", "schema": EVENT_ID}],
                    "responses": {"200": {"description": "event stream",
                                          "content": {"text/event-stream": {"schema": SSE_EVENT}}},
                                  **_errors(*COMMON_ERRORS)}},
        },
        "/api/v1/generate": {
            "post": {"summary": "Submit and wait for the result", "parameters": [idem,
                     {"name": "timeout", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
                     "requestBody": json_body,
                     "responses": {"200": _job_response("finished"), **_errors(*COMMON_ERRORS, 402, 409, 504)}},
        },
        "/api/v1/uploads": {
            "post": {"summary": "Upload an input image for img2img",
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                         "type": "object", "properties": {"image": {"type": "string", "format": "binary"}},
                         "required": ["image"]}}}},
                     "responses": {"201": {"description": "stored", "content": {"application/json": {"schema": obj}}},
                                   **_errors(*COMMON_ERRORS)}},
        },
        "/api/v1/models": {"get": {"summary": "Models the backends offer", "responses": {
            "200": {"description": "models", "content": {"application/json": {"schema": obj}}}, **_errors(401)}}},
        "/api/v1/jobs/{job_id}/webhooks": {
            "get": {"summary": "The job's webhook deliveries, each with all its tries", "parameters": [JOB_ID],
                    "responses": {"200": {"description": "deliveries",
                                          "content": {"application/json": {"schema": obj}}},
                                  **_errors(*COMMON_ERRORS)}},
        },
        "/api/v1/jobs/{job_id}/webhooks/{delivery_id}/replay": {
            "post": {"summary": "Send a webhook delivery again", "parameters": [JOB_ID, {
                "name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                     "responses": {"202": {"description": "due again",
                                           "content": {"application/json": {"schema": obj}}},
                                   **_errors(*COMMON_ERRORS)}},
        },
        "/metrics": {"get": {"summary": "Prometheus metrics of the whole fleet", "responses": {
            "200": {"description": "text exposition format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401, 403, 429)}}},
        "/health": {"get": {"summary": "Each dependency by name: up, degraded or down (cached; no details)",
                            "security": [], "responses": {
            "200": {"description": "healthy", "content": {"application/json": {"schema": HEALTH}}},
            "503": {"description": "degraded or unhealthy", "content": {"application/json": {"schema": HEALTH}}},
            **_errors(429)}}},
        "/health/details": {"get": {"summary": "The last health check in full (INTERNAL)", "responses": {
            "200": {"description": "healthy", "content": {"application/json": {"schema": obj}}},
            "503": {"description": "degraded or unhealthy", "content": {"application/json": {"schema": obj}}},
            **_errors(401, 403, 429)}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {
            "200": {"description": "alive", "content": {"application/json": {"schema": obj}}}, **_errors(429)}}},
        "/readyz": {"get": {"summary": "Readiness", "security": [], "responses": {
            "200": {"description": "ready", "content": {"application/json": {"schema": obj}}},
            "503": {"description": "not ready", "content": {"application/json": {"schema": obj}}}, **_errors(429)}}},
        "/ping": {"get": {"summary": "Ping", "security": [], "responses": {
            "200": {"description": "pong", "content": {"application/json": {"schema": obj}}}, **_errors(429)}}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comfyflow",
            "version": __version__,
            "description": "Production image generation on ComfyUI servers.",
        },
        "paths": {**paths, **_more_paths(schemas)},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


@bp.get("/openapi.json")
async def openapi_json(request: Request) -> HTTPResponse:
    return json(openapi())


#: ReDoc, shipped in the package (static/redoc/VERSION says which and how to update it): /docs works offline.
REDOC = Path(__file__).parent / "static" / "redoc" / "redoc.standalone.js"
REDOC_ROUTE = "/docs/redoc.standalone.js"
DOCS = f"""<!doctype html><html><head><meta charset="utf-8"><title>comfyflow API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<noscript>The OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="{REDOC_ROUTE}"></script></body></html>"""


@bp.get("/docs")
async def docs(request: Request) -> HTTPResponse:
    return html(DOCS)


@bp.get(REDOC_ROUTE)
async def redoc_bundle(request: Request) -> HTTPResponse:
    return await file(
        REDOC, mime_type="application/javascript; charset=utf-8", headers={"Cache-Control": "public, max-age=86400"}
    )
