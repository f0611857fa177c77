"""ragserver: question answering and search for a blog, on one machine."""

from __future__ import annotations

from pathlib import Path

from flask import Flask


def _asset_folder(name: str) -> str:
    """templates/ and static/ sit beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    inside = here / name
    return str(inside if inside.is_dir() else here.parent / name)


def create_app(config=None, *, embedder=None, llm=None) -> Flask:
    """Build the web app. Models are never loaded here: they load lazily, after fork."""
    from htmx_flask import Htmx

    from . import config as config_module
    from . import render
    from .web import admin, chat, errors, explore, health, mcp_endpoint, openai_api, policy, search
    from .web.services import Services

    settings = config_module.load_settings(**(config or {}))
    app = Flask(__name__, instance_path=str(Path(settings.instance_path).resolve()),
                template_folder=_asset_folder("templates"), static_folder=_asset_folder("static"))
    app.config["RAGSERVER"] = settings
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    if settings.trusted_proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)
    Htmx(app)
    app.jinja_env.filters["snippet"] = render.snippet
    app.jinja_env.filters["safe_url"] = render.safe_url
    app.jinja_env.filters["markdown"] = render.render_markdown
    app.extensions["ragserver"] = Services(settings, embedder=embedder, llm=llm)
    app.register_blueprint(health.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(explore.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(mcp_endpoint.bp)
    app.register_blueprint(openai_api.bp)
    errors.register(app)
    app.after_request(policy.add_security_headers)
    return app
