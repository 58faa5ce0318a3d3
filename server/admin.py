"""Run-time settings: change latency and fault rates without restarting the server.

A sweep over tool speed (the paper's x-axis) then needs one server, not one per grid point:
``PUT /admin/latency`` and ``PUT /admin/faults`` replace the settings for every later call.
The routes are protected by the admin token (or, without one, the api key; with neither, only
loopback clients may use them), because whoever changes latency changes every number measured.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from timely.errors import ConfigError
from timely_server.core import ToolServer
from timely_server.errors import ApiError, error_responses
from timely_server.faults import FaultConfig, FaultField, FaultSpec
from timely_server.latency import LatencyConfig, LatencySpec
from timely_server.routes import body_schema, parse_json, read_body

# The OpenAPI form of a latency spec: what parse_latency accepts.
_SPEC_SCHEMA = {
    "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}, {"type": "object"}],
    "description": "'lognormal:1.0,0.6', a number of seconds, or {kind: ..., ...}",
}
_FAULTS_SCHEMA = {
    "anyOf": [{"type": "string"}, FaultSpec.model_json_schema()],
    "description": "'error=0.05,5xx=0.01' or {error_rate: 0.05, ...}; rates add up to at most 1",
}


class LatencyUpdate(BaseModel):
    """Body of ``PUT /admin/latency``: what is given replaces the current setting."""

    model_config = ConfigDict(extra="forbid")

    default: LatencySpec | None = Field(None, description="New default latency spec.")
    per_tool: dict[str, LatencySpec] | None = Field(
        None, description="New per-tool overrides (replaces all of them; {} clears them)."
    )


class FaultsUpdate(BaseModel):
    """Body of ``PUT /admin/faults``: what is given replaces the current setting."""

    model_config = ConfigDict(extra="forbid")

    default: FaultField | None = Field(None, description="New default fault rates.")
    per_tool: dict[str, FaultField] | None = Field(
        None, description="New per-tool fault rates (replaces all of them)."
    )


class LatencyView(BaseModel):
    default: str
    per_tool: dict[str, str]
    profile: str | None = None
    effective: dict[str, str] = Field(description="The model each served tool gets now.")


class FaultsView(BaseModel):
    default: dict[str, float]
    per_tool: dict[str, dict[str, float]]


def _update_schema(
    model: type[BaseModel], spec: dict[str, Any], tools: list[str]
) -> dict[str, Any]:
    """The documented PUT body: ``default`` and ``per_tool`` (keyed by served tool names)."""
    schema = body_schema(model)
    body = schema["requestBody"]["content"]["application/json"]["schema"]
    per_tool = {"type": "object", "additionalProperties": spec, "propertyNames": {"enum": tools}}
    body["properties"] = {
        "default": {"anyOf": [spec, {"type": "null"}]},
        "per_tool": {"anyOf": [per_tool, {"type": "null"}]},
    }
    body.pop("$defs", None)
    return schema


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def require_admin(server: ToolServer, request: Request) -> None:
    """Allow the request only with the admin credential (see the module docstring).

    Raises:
        ApiError: 401 without a bearer token where one is needed, 403 with the wrong one or
            from a non-loopback client when no token is configured.
    """
    config = server.config
    secret = config.admin_token or config.api_key
    if secret is None:
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            raise ApiError(
                403,
                "forbidden",
                "the admin endpoints answer loopback clients only unless the server has an "
                "admin token (--admin-token) or api key",
            )
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthorized",
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
        raise ApiError(403, "forbidden", "this token may not use the admin endpoints")


def _latency_view(server: ToolServer) -> dict[str, Any]:
    latency, registry = server.latency, server.registry
    return {
        "default": latency.default.spec,
        "per_tool": {k: v.spec for k, v in sorted(latency.per_tool.items())},
        "profile": server.config.latency_profile,
        "effective": {
            name: latency.model_for(name, registry.default_latency(registry.get(name))).spec
            for name in registry.names()
        },
    }


def _faults_view(server: ToolServer) -> dict[str, Any]:
    faults = server.faults
    return {
        "default": faults.default.model_dump(),
        "per_tool": {k: v.model_dump() for k, v in sorted(faults.per_tool.items())},
    }


def install_admin_routes(app: FastAPI, server: ToolServer) -> None:
    """Add ``/admin/latency`` and ``/admin/faults`` (GET shows, PUT replaces)."""
    limit = server.config.max_body_bytes
    errors = error_responses(401, 403)
    tools = server.registry.names()

    @app.get("/admin/latency", response_model=LatencyView, responses=errors, tags=["admin"])
    async def get_latency(request: Request) -> dict[str, Any]:
        """The latency settings in force."""
        require_admin(server, request)
        return _latency_view(server)

    @app.put(
        "/admin/latency",
        response_model=LatencyView,
        responses=error_responses(400, 401, 403, 413, 422),
        openapi_extra=_update_schema(LatencyUpdate, _SPEC_SCHEMA, tools),
        tags=["admin"],
    )
    async def put_latency(request: Request) -> dict[str, Any]:
        """Replace the default latency and/or the per-tool overrides for later calls."""
        require_admin(server, request)
        raw = await read_body(request, limit)
        update = parse_json(raw, LatencyUpdate, '{"default"?: spec, "per_tool"?: {tool: spec}}')
        current = server.latency
        new = LatencyConfig(
            default=update.default if update.default is not None else current.default,
            per_tool=update.per_tool if update.per_tool is not None else dict(current.per_tool),
        )
        try:
            server.set_latency(new)
        except ConfigError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        return _latency_view(server)

    @app.get("/admin/faults", response_model=FaultsView, responses=errors, tags=["admin"])
    async def get_faults(request: Request) -> dict[str, Any]:
        """The fault rates in force."""
        require_admin(server, request)
        return _faults_view(server)

    @app.put(
        "/admin/faults",
        response_model=FaultsView,
        responses=error_responses(400, 401, 403, 413, 422),
        openapi_extra=_update_schema(FaultsUpdate, _FAULTS_SCHEMA, tools),
        tags=["admin"],
    )
    async def put_faults(request: Request) -> dict[str, Any]:
        """Replace the default fault rates and/or the per-tool ones for later calls."""
        require_admin(server, request)
        raw = await read_body(request, limit)
        update = parse_json(raw, FaultsUpdate, '{"default"?: rates, "per_tool"?: {tool: rates}}')
        current = server.faults
        new = FaultConfig(
            default=update.default if update.default is not None else current.default,
            per_tool=update.per_tool if update.per_tool is not None else dict(current.per_tool),
        )
        try:
            server.set_faults(new)
        except ConfigError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        return _faults_view(server)
