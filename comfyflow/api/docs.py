"""The OpenAPI document, built from the same pydantic models that validate requests, and a docs page."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import TypeAdapter
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, html, json

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
COMMON_ERRORS = (400, 401, 403, 404, 405, 413, 415, 422, 429, 503)


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
    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
    }
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
            **_errors(401, 403)}}},
        "/health": {"get": {"summary": "Every dependency", "security": [], "responses": {
            "200": {"description": "healthy", "content": {"application/json": {"schema": obj}}},
            "503": {"description": "degraded", "content": {"application/json": {"schema": obj}}}}}},
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {
            "200": {"description": "alive", "content": {"application/json": {"schema": obj}}}}}},
        "/readyz": {"get": {"summary": "Readiness", "security": [], "responses": {
            "200": {"description": "ready", "content": {"application/json": {"schema": obj}}},
            "503": {"description": "not ready", "content": {"application/json": {"schema": obj}}}}}},
        "/ping": {"get": {"summary": "Ping", "security": [], "responses": {
            "200": {"description": "pong", "content": {"application/json": {"schema": obj}}}}}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "comfyflow",
            "version": __version__,
            "description": "Production image generation on ComfyUI servers.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


@bp.get("/openapi.json")
async def openapi_json(request: Request) -> HTTPResponse:
    return json(openapi())


DOCS = """<!doctype html><html><head><meta charset="utf-8"><title>comfyflow API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<noscript>The OpenAPI document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script></body></html>"""


@bp.get("/docs")
async def docs(request: Request) -> HTTPResponse:
    return html(DOCS)
