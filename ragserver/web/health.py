"""/healthz: is the database there, and is its index complete?"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..storage import NotADatabase, backend_of, exists, open_storage
from ..llm import LLMError, resolve_gguf
from .services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Database and index status as JSON; 503 when the database is missing or unreadable."""
    settings = current_app.config["RAGSERVER"]
    where = {"database": settings.database_label, "backend": backend_of(settings.database)}
    if not exists(settings.database):
        return jsonify(status="no database", **where,
                       hint="run `ragserver ingest SOURCE...`"), 503
    try:
        storage = open_storage(settings.database, readonly=True)
        try:
            stats = storage.get_stats()
        finally:
            storage.close()
    except NotADatabase as error:  # a PostgreSQL database nothing was ingested into yet
        return jsonify(status="no database", **where, error=str(error),
                       hint="run `ragserver ingest SOURCE...`"), 503
    except Exception as error:  # corrupt or unreadable file, server down: report, no traceback
        return jsonify(status="database error", **where, error=str(error)), 503
    index_ok = stats.index_rows == stats.vectors and stats.index_state == "ok"
    llm, llm_ok = _llm_status(settings)
    model = stats.model
    status = ("ok" if index_ok and llm_ok else
              "index incomplete: run `ragserver reindex`" if not index_ok else "answer model missing")
    return jsonify(
        status=status, **where, vector_index=stats.vector_index, posts=stats.posts, passages=stats.passages,
        vectors=stats.vectors, index_rows=stats.index_rows,
        embedding_model=model.name if model else None, llm=llm, activity=_activity_status(),
    ), (200 if status == "ok" else 503)


def _llm_status(settings) -> tuple[dict, bool]:
    """Which answer model, whether it is loaded, busy, and how many wait for it."""
    svc = services()
    status = {"busy": svc.gate.busy, "waiting": svc.gate.waiting}
    if settings.llm_url:
        return {**status, "backend": "remote", "url": settings.llm_url}, True
    try:
        path = resolve_gguf(settings.llm_model, settings.model_dir)
    except LLMError as error:
        return {**status, "backend": "local", "error": str(error)}, False
    if path is None:  # RAGSERVER_LLM_MODEL=none: quoted answers only, by choice
        return {**status, "backend": "none"}, True
    return {**status, "backend": "local", "model": path.name, **svc.llm_status()}, True


def _activity_status() -> dict | None:
    """Where readers' activity goes and whether its writes fail (they never fail a request)."""
    store = services().activity
    return None if store is None else store.status()
