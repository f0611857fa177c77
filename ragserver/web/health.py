"""/healthz: is the database there, and is its index complete?"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import store
from ..db import connect

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Database and index status as JSON; 503 when the database is missing or unreadable."""
    settings = current_app.config["RAGSERVER"]
    path = settings.db_path
    if not path.exists():
        return jsonify(status="no database", database=str(path),
                       hint="run `ragserver ingest SOURCE...`"), 503
    try:
        conn = connect(path, readonly=True)
        try:
            stats = store.get_stats(conn)
            state = store.get_meta(conn, "index_state", "ok")
        finally:
            conn.close()
    except Exception as error:  # corrupt or unreadable file: report, never a traceback
        return jsonify(status="database error", database=str(path), error=str(error)), 503
    index_ok = stats.index_rows == stats.vectors and state == "ok"
    model = stats.model
    return jsonify(
        status="ok" if index_ok else "index incomplete: run `ragserver reindex`",
        database=str(path), posts=stats.posts, passages=stats.passages,
        vectors=stats.vectors, index_rows=stats.index_rows,
        embedding_model=model.name if model else None,
    ), (200 if index_ok else 503)
