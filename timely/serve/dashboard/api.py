"""The dashboard's routes: the page, its static files and a small read-only JSON API.

Every route is a plain ``def``: FastAPI runs it in a worker thread, so reading files never
blocks the event loop of the app it is mounted in (the agent endpoint keeps serving runs).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from timely.errors import ConfigError
from timely.runrecord import OUTCOMES, RESULTS, TRAJECTORIES
from timely.serve.dashboard import records
from timely.serve.dashboard.sources import Source, Sources
from timely.serve.errors import error_response, error_responses, install_error_handlers

STATIC = resources.files("timely.serve.dashboard") / "static"
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "episode.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
FILTERS = ("source", "task", "family", "policy", "latency", "budget", "outcome")
DEFAULT_LIMIT, MAX_LIMIT = 500, 5000
# /api/episodes reads its query by hand (unknown names are refused): documented here.
_OUTCOME = "(" + "|".join(OUTCOMES) + ")"
_OUTCOME_LIST = {"pattern": f"^({_OUTCOME}(,{_OUTCOME})*)?$"}
_EPISODE_QUERY = [
    *(
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string", **_OUTCOME_LIST}
            if name == "outcome"
            else {"type": "string"},
            "description": f"Only episodes whose {name} is one of these (comma-separated).",
        }
        for name in FILTERS
    ),
    *(
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
        }
        for name in ("offset", "limit")
    ),
]
# The page and the API change as runs are appended: a browser must ask again, not cache.
NO_CACHE = {"Cache-Control": "no-cache"}


def dashboard_router(dirs: list[Path]) -> APIRouter:
    """The dashboard as a router to include in a FastAPI app (at ``/`` or under a prefix).

    Routes (all ``GET``; URLs in the page are relative, so a prefix works):

    * ``/`` — the page; ``/dashboard/app.js``, ``episode.js``, ``style.css`` — its code and style.
    * ``/api/summary`` — the directories, the sources found in them (runs and reports), episode
      counts, the values each filter can take, problems (a corrupt line, a missing directory)
      and a ``version`` that changes whenever a shown file changes (the page polls it).
    * ``/api/results`` — leaderboard tables (from each results.json, or computed from the
      episodes of a run that has none) and the PNG plots of each report; a run shown because a
      report names it adds none of its own.
    * ``/api/plots/{source}/{name}`` — one PNG plot of a source.
    * ``/api/episodes?source=&task=&family=&policy=&latency=&budget=&outcome=&offset=&limit=``
      — episode rows matching every filter given (a filter may list values with commas), with
      ``total`` and the count of each outcome under the other filters.
    * ``/api/episodes/{id}`` — one episode with every step's timing (the timeline).

    Errors are JSON ``{"error": {"type", "message", ...}}``: 404 for an unknown episode, source
    or plot, 422 for a bad query value; never a 500 for bad files, which are reported in
    ``/api/summary`` instead.

    Args:
        dirs: run directories, report directories, or folders holding several. A directory that
            does not exist yet (the agent endpoint's ``--out`` before its first run) is shown
            as soon as it appears; files are re-read when they change.
    """
    sources = Sources([Path(d) for d in dirs])
    router = APIRouter(tags=["dashboard"])

    @router.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(
            (STATIC / "index.html").read_bytes(), media_type="text/html", headers=NO_CACHE
        )

    @router.get("/dashboard/{asset}", include_in_schema=False)
    def asset(asset: str) -> Response:
        if asset not in _ASSETS:
            return error_response(404, "not_found", f"no dashboard file {asset!r}")
        return Response((STATIC / asset).read_bytes(), media_type=_ASSETS[asset], headers=NO_CACHE)

    # The page polls the summary every few seconds; unchanged files give the same answer.
    last_summary: dict[tuple[str, ...], dict[str, Any]] = {}

    @router.get("/api/summary")
    def summary() -> JSONResponse:
        with sources.lock:
            found = sources.refresh()
            key = (sources.version(found), *sources.problems)
            if key in last_summary:
                return JSONResponse(last_summary[key], headers=NO_CACHE)
            rows = [row for s in found for row in _rows(s)]
            facets = {
                key: _values(rows, key) for key in ("source", "task", "policy", "latency", "budget")
            }
            facets["outcome"] = [
                {"value": k, "label": label, "count": sum(r["outcome"] == k for r in rows)}
                for k, label in OUTCOMES.items()
            ]
            body = {
                "dirs": [str(d) for d in sources.dirs],
                "version": key[0],
                "episodes": len(rows),
                "sources": [_describe(s) for s in found],
                "facets": facets,
                "problems": [*sources.problems, *(p for s in found for p in _problems(s))],
            }
            last_summary.clear()
            last_summary[key] = body
        return JSONResponse(body, headers=NO_CACHE)

    @router.get("/api/results")
    def results() -> JSONResponse:
        with sources.lock:
            found = sources.refresh()
            tables, plots = [], []
            for s in found:
                if s.linked_from is not None:
                    continue  # a run shown for the report that names it: that report's tables
                for table in _tables(s):
                    tables.append(
                        {"source": s.id, "source_name": s.name, "source_kind": s.kind, **table}
                    )
                plots += [
                    {"source": s.id, "name": n, "url": f"api/plots/{s.id}/{n}"} for n in s.plots()
                ]
        return JSONResponse({"tables": tables, "plots": plots}, headers=NO_CACHE)

    @router.get(
        "/api/plots/{source}/{name}",
        responses={
            200: {"content": {"image/png": {}}, "description": "The plot"},
            **error_responses(404, 422),
        },
    )
    def plot(source: str, name: str) -> Response:
        with sources.lock:
            src = {s.id: s for s in sources.refresh()}.get(source)
            if src is None or src.report_dir is None or name not in src.plots():
                return error_response(404, "not_found", f"no plot {name!r} in source {source!r}")
            return FileResponse(src.report_dir / name, media_type="image/png", headers=NO_CACHE)

    @router.get(
        "/api/episodes",
        responses=error_responses(422),
        openapi_extra={"parameters": _EPISODE_QUERY},
    )
    def episodes(request: Request) -> JSONResponse:
        query = request.query_params
        unknown = sorted(set(query) - {*FILTERS, "offset", "limit"})
        if unknown:
            return _bad(
                f"unknown query parameter(s) {unknown}; use {[*FILTERS, 'offset', 'limit']}"
            )
        wanted = {k: set(query[k].split(",")) for k in FILTERS if query.get(k)}
        bad = wanted.get("outcome", set()) - set(OUTCOMES)
        if bad:
            return _bad(f"unknown outcome(s) {sorted(bad)}; use {list(OUTCOMES)}", "outcome")
        try:
            offset = _int(query.get("offset"), 0, "offset")
            limit = min(_int(query.get("limit"), DEFAULT_LIMIT, "limit"), MAX_LIMIT)
        except ValueError as exc:
            return _bad(str(exc), str(exc).split()[0])
        with sources.lock:
            rows = [row for s in sources.refresh() for row in _rows(s)]
            others = {k: v for k, v in wanted.items() if k != "outcome"}
            pool = [r for r in rows if _matches(r, others)]
            counts = {k: sum(r["outcome"] == k for r in pool) for k in OUTCOMES}
            hits = [r for r in pool if _matches(r, wanted)]
        body = {
            "total": len(hits),
            "offset": offset,
            "limit": limit,
            "counts": counts,
            "episodes": hits[offset : offset + limit],
        }
        return JSONResponse(body, headers=NO_CACHE)

    @router.get("/api/episodes/{episode_id}", responses=error_responses(404, 422))
    def episode(episode_id: str) -> JSONResponse:
        source_id = episode_id.partition(":")[0]
        with sources.lock:
            src = {s.id: s for s in sources.refresh()}.get(source_id)
            ep = src.episodes if src is not None else None
            row = ep.rows.get(episode_id) if ep is not None else None
            record = ep.record(episode_id) if ep is not None and row is not None else None
        if row is None or record is None:
            return error_response(
                404,
                "not_found",
                f"no episode {episode_id!r}; list them with /api/episodes",
            )
        return JSONResponse(records.detail(record, row), headers=NO_CACHE)

    return router


def create_dashboard_app(dirs: list[Path]) -> FastAPI:
    """A standalone dashboard app (``timely dashboard``).

    Raises:
        ConfigError: a directory does not exist, or none holds a run or a report.
    """
    check_dirs(dirs)
    # No /docs: Swagger UI loads its scripts from a CDN, and the dashboard works offline.
    app = FastAPI(title="Timely Machine dashboard", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(dashboard_router(dirs))
    return app


def check_dirs(dirs: list[Path]) -> list[Source]:
    """The sources in ``dirs``, or a ConfigError saying what is missing and how to make it."""
    if not dirs:
        raise ConfigError("give at least one run or report directory: timely dashboard runs/NAME")
    missing = [str(d) for d in dirs if not Path(d).is_dir()]
    if missing:
        raise ConfigError(f"no such directory: {', '.join(missing)}")
    found = Sources([Path(d) for d in dirs]).refresh()
    if not found:
        raise ConfigError(
            f"nothing to show in {', '.join(str(d) for d in dirs)}: no {TRAJECTORIES} or "
            f"{RESULTS} there or up to two levels below; make a run with `timely eval --suite "
            "smoke --out runs/smoke` or a report with `timely leaderboard runs/smoke --out "
            "reports/smoke`"
        )
    return found


# ---- helpers --------------------------------------------------------------------------------


def _rows(src: Source) -> list[dict[str, Any]]:
    return list(src.episodes.rows.values()) if src.episodes is not None else []


def _values(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[key]] = counts.get(r[key], 0) + 1
    return [{"value": v, "count": n} for v, n in sorted(counts.items())]


def _describe(src: Source) -> dict[str, Any]:
    ep = src.episodes
    return {
        "id": src.id,
        "name": src.name,
        "path": str(src.path),
        "kind": src.kind,
        "episodes": len(ep.rows) if ep else 0,
        "skipped": ep.skipped if ep else 0,
        "results": str(src.results.path) if src.results else None,
        "plots": len(src.plots()),
        "linked_from": src.linked_from,
        "writing": bool(ep and ep.torn_tail),
    }


def _problems(src: Source) -> list[str]:
    out = list(src.episodes.problems) if src.episodes else []
    if src.results is not None and src.results.problem:
        out.append(src.results.problem)
    return out


def _tables(src: Source) -> list[dict[str, Any]]:
    value = src.results.read() if src.results is not None else None
    if value is not None:
        try:
            return [
                {**t, "origin": str(src.results.path)} for t in records.tables_from_results(value)
            ]
        except ValueError:
            pass  # not a results.json we know: fall back to the episodes, if any
    rows = [r for r in _rows(src)]
    origin = f"computed from {src.episodes.path}" if src.episodes else ""
    return [{**t, "origin": origin} for t in records.tables_from_episodes(rows)]


def _matches(row: dict[str, Any], wanted: dict[str, set[str]]) -> bool:
    return all(str(row[k]) in values for k, values in wanted.items())


def _int(raw: str | None, default: int, name: str) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _bad(message: str, param: str | None = None) -> JSONResponse:
    return error_response(422, "invalid_request", message, param)
