"""The `ragserver` command: the one place that ties ingest and serving together."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextlib import ExitStack, contextmanager

import click

from . import config as config_module
from .grounding import CITATION
from .storage import ModelMismatchError

EXIT_ERROR = 1
EXIT_SKIPPED = 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: try again later


def _settings(db: str | None):
    try:
        return config_module.load_settings(db=db)
    except ValueError as error:
        raise click.ClickException(str(error)) from None


def _open(settings, *, must_exist: bool, readonly: bool = False):
    from .storage import BackendUnavailable, NotADatabase, exists, open_storage

    if must_exist and not exists(settings.database):
        raise click.ClickException(
            f"no database at {settings.database_label}. Run `ragserver ingest SOURCE...` first "
            "(or point --db / RAGSERVER_DB / RAGSERVER_DATABASE_URL at an existing one).")
    try:
        return open_storage(settings.database, readonly=readonly, create=not must_exist)
    except (BackendUnavailable, NotADatabase) as error:
        raise click.ClickException(str(error)) from None
    except Exception as error:  # the driver's errors: not a database, read-only, ...
        raise click.ClickException(
            f"cannot open database {settings.database_label}: {error}") from None


def _embedder(settings):
    import torch

    from .embedder import EmbedderError, load_embedder

    # torch's default, every core, spins waiting for a core the server is using
    # (bench/bench_threads.py); commands take RAGSERVER_EMBED_THREADS.
    torch.set_num_threads(settings.embed_thread_count)
    try:
        return load_embedder(settings)
    except EmbedderError as error:
        raise click.ClickException(str(error)) from None


@contextmanager
def _writing(target, what: str, *others):
    """Hold the writer lock of `target` (a path or URL) while writing; a held lock, an
    unwritable folder or a failed write (disk full, read-only database) ends the command
    with a clear message, with the passwords of `target` and `others` hidden."""
    from .storage import (BackendUnavailable, CannotWrite, IngestLocked, database_errors, scrub,
                          writer_lock)

    try:
        with writer_lock(target):
            yield
    except IngestLocked as error:
        click.echo(f"Error: {scrub(str(error), target, *others)}", err=True)
        sys.exit(EXIT_LOCKED)
    except (CannotWrite, BackendUnavailable) as error:
        raise click.ClickException(scrub(str(error), target, *others)) from None
    except database_errors() as error:
        # Writes are transactions: what committed before the failure is whole, the rest rolled back.
        raise click.ClickException(scrub(
            f"{what} stopped: {error}. The database is consistent (work committed before "
            "the error is kept); fix the cause and run the same command again.",
            target, *others)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ragserver")
def cli():
    """Question answering and search for a blog, on one machine.

    Settings come from RAGSERVER_* environment variables; see the README.
    """


db_option = click.option("--db", metavar="PATH|URL", default=None,
                         help="Database: a SQLite file or a postgresql:// URL (default: "
                              "RAGSERVER_DB or RAGSERVER_DATABASE_URL, else ragserver.db in "
                              "the instance folder).")
json_lines_option = click.option("--json", "as_json", is_flag=True,
                                 help="One JSON object per line.")


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@db_option
@click.option("--base-url", default="",
              help="Post URLs for files: BASE_URL + path without extension "
                   "(front matter url/slug wins).")
@click.option("--prune/--no-prune", default=None,
              help="Delete posts that disappeared from a source. Default: on for folders and "
                   "globs, off for feeds and stdin.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar: only warnings and the summary line (for cron).")
def ingest(sources, db, base_url, prune, quiet):
    """Add or update posts from SOURCES: folders, globs, Markdown/HTML/plain-text files
    (.md, .html, .txt), RSS/Atom feeds (file or http(s) URL), or - for NDJSON on stdin
    (id, title, url, content, date, format: markdown, html or text).

    Unchanged posts are not re-embedded. Exit status: 0 all read, 3 finished but some
    input was skipped (see warnings), 75 another ingest is running, 1 error.
    """
    from ragserver.ingest.pipeline import Ingester
    from ragserver.ingest.sources import SkipInput, Skipped, open_source

    settings = _settings(db)
    _configure_logging()
    opened, early_skips = [], []
    for spec in sources:
        try:
            opened.append(open_source(spec, base_url=base_url, max_bytes=settings.max_file_bytes,
                                      stdin=click.get_binary_stream("stdin")))
        except SkipInput as skip:
            early_skips.append(Skipped(spec, str(skip).removeprefix(f"{spec}: ")))
            logging.getLogger("ragserver.ingest").warning("skipped %s", skip)
    with _writing(settings.database, "ingest"):
        embedder = _embedder(settings)
        storage = _open(settings, must_exist=False)
        bar = _Progress(quiet)
        try:
            with _topic_labeler(settings) as labeler:
                ingester = Ingester(storage, embedder, commit_rows=settings.commit_rows,
                                    on_event=bar.event, vector_index=settings.index_kind,
                                    labeler=labeler, threads=settings.embed_thread_count)
                summary = ingester.run(opened, prune=prune)
            in_use = storage.index_kind()
        except ModelMismatchError as error:
            raise click.ClickException(str(error)) from None
        finally:
            bar.close()
            storage.close()
    summary.skipped[:0] = early_skips
    if in_use != settings.index_kind:
        click.echo(f"note: {settings.database_label} keeps its {in_use} index although "
                   f"RAGSERVER_VECTOR_INDEX is {settings.index_kind}; `ragserver reindex` "
                   "switches it.", err=True)
    click.echo(summary.line())
    if summary.skipped:
        sys.exit(EXIT_SKIPPED)


class _Progress:
    """A tqdm bar on a terminal; plain log lines otherwise; nothing but warnings with --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.embedded = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc="ingest", unit=" posts", file=sys.stderr, dynamic_ncols=True)

    def event(self, kind: str, name: str) -> None:
        """kind: read (a post or skipped input), embedded (N passages), added/updated/deleted."""
        if self.bar is not None:
            if kind == "read":
                self.bar.update(1)
            elif kind == "embedded":
                self.embedded += int(name)
                self.bar.set_postfix_str(f"{self.embedded} passages embedded")
        elif not self.quiet and kind in ("added", "updated", "deleted"):
            click.echo(f"{kind} {name}", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _configure_logging() -> None:
    class _Handler(logging.Handler):
        def emit(self, record):
            click.echo(f"warning: {record.getMessage()}", err=True)

    logger = logging.getLogger("ragserver.ingest")
    if not logger.handlers:
        logger.addHandler(_Handler())
        logger.propagate = False
    logger.setLevel(logging.WARNING)


@cli.command()
@click.argument("query")
@db_option
@click.option("-n", "number", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many passages to return.")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default="hybrid",
              show_default=True,
              help="Rank by meaning and keywords fused, by meaning only, or by keywords only.")
@json_lines_option
def search(query, db, number, mode, as_json):
    """Find the passages that best match QUERY, best first (the ranking of the search page)."""
    from .results import ranked_passage
    from .retrieve import retrieve

    if not query.strip():
        raise click.ClickException("the query is empty")
    settings = _settings(db)
    storage = _open(settings, must_exist=True, readonly=True)
    try:
        if storage.index_is_empty():
            click.echo(_empty_message(storage, settings), err=True)
            return
        embedder = _embedder(settings)
        try:
            hits = retrieve(storage, embedder, query, number, mode=mode)
        except ModelMismatchError as error:
            raise click.ClickException(str(error)) from None
    finally:
        storage.close()
    for rank, hit in enumerate(hits, 1):
        if as_json:
            click.echo(json.dumps({"rank": rank, **ranked_passage(hit)}, ensure_ascii=False))
        else:
            where = " > ".join([hit.title, *hit.heading_path])
            shown = hit.similarity if hit.similarity is not None else hit.score
            click.echo(f"{rank}. [{shown:.3f}] {where}")
            click.echo(f"   {hit.link or hit.source}")
            click.echo(f"   {_one_line(hit.text, 300)}\n")


@cli.command(name="related")
@click.argument("source")
@db_option
@click.option("-n", "number", type=click.IntRange(1, 10), default=10, show_default=True,
              help="How many related posts to list.")
@json_lines_option
def related_command(source, db, number, as_json):
    """List the posts most similar to SOURCE (a post's source id, or its URL)."""
    from .related import NotFound, related_posts
    from .results import related_post

    settings = _settings(db)
    storage = _open(settings, must_exist=True, readonly=True)
    try:
        is_url = source.startswith(("http://", "https://"))
        post, similar = related_posts(storage, source=None if is_url else source,
                                      url=source if is_url else None, n=number)
    except NotFound as error:
        raise click.ClickException(f"{error} in {settings.database_label}") from None
    finally:
        storage.close()
    if not similar and not as_json:
        click.echo(f"No related posts for {post.source} yet: `ragserver ingest` computes them "
                   "at the end of each run.", err=True)
    for rank, item in enumerate(similar, 1):
        if as_json:
            click.echo(json.dumps({"rank": rank, **related_post(item)}, ensure_ascii=False))
        else:
            click.echo(f"{rank}. [{item.score:.3f}] {item.title}\n   {item.url or item.source}")


@contextmanager
def _topic_labeler(settings, use_model: bool = True):
    """A Labeler for rebuilt topics that starts the answer model on first use (so nothing
    loads when no topic is named), or None when topics are named by keywords. A model that
    fails leaves the remaining topics to their keywords, with a warning."""
    from .explore.topics import model_labeler
    from .llm import LLMError, load_chat_model

    if not use_model or settings.topic_labels == "keywords" or settings.llm_model == "none" \
            and not settings.llm_url:
        yield None
        return
    state = {"model": None, "failed": False}

    def label(titles, words):
        if state["failed"]:
            return ""
        try:
            if state["model"] is None:
                state["model"] = load_chat_model(settings, serving=False)
            return model_labeler(state["model"])(titles, words)
        except LLMError as error:
            state["failed"] = True
            logging.getLogger("ragserver.explore").warning(
                "topic labels: the answer model failed (%s); topics are named by keywords", error)
            return ""

    try:
        yield label
    finally:
        if state["model"] is not None and hasattr(state["model"], "close"):
            state["model"].close()


def _read_k(value: str | None) -> int | None:
    from .explore.topics import MAX_TOPICS

    if value is None:
        return None
    if value.strip().lower() == "auto":
        return 0
    try:
        k = int(value)
    except ValueError:
        k = -1
    if not 1 <= k <= MAX_TOPICS:
        raise click.BadParameter(f"must be a whole number from 1 to {MAX_TOPICS}, or auto, "
                                 f"not {value!r}", param_hint="--k")
    return k


@cli.command()
@db_option
@click.option("--k", "k", metavar="N|auto", default=None,
              help="Number of topics (1-20) from now on; auto: chosen from the posts "
                   "(the default). Giving it rebuilds the topics.")
@click.option("--rebuild", is_flag=True,
              help="Cluster and name every post anew, however few changed.")
@click.option("--keywords", "keywords_only", is_flag=True,
              help="Name rebuilt topics by their keywords, without the answer model.")
@json_lines_option
def topics(db, k, rebuild, keywords_only, as_json):
    """Group the posts into topics and list them, largest first: each topic's name, its most
    distinctive words and its most central posts.

    Topics are rebuilt (clustered, named and mapped) when there are none yet, when --k or
    --rebuild is given, or when a tenth of the posts changed since the last build; else
    new posts join the nearest topic. `ragserver ingest` does the same at the end of a run.
    """
    from . import explore, related

    settings = _settings(db)
    chosen = _read_k(k)
    _configure_logging()
    with _writing(settings.database, "topics"):
        storage = _open(settings, must_exist=True)
        try:
            if storage.count_vectors() == 0:
                raise click.ClickException(_empty_message(storage, settings))
            related.refresh(storage)  # post vectors of a run killed before its end
            with _topic_labeler(settings, not keywords_only) as labeler:
                done = explore.refresh(storage, labeler=labeler, k=chosen, rebuild=rebuild,
                                       threads=settings.embed_thread_count)
            shape = explore.load(storage)
        finally:
            storage.close()
    click.echo(f"{done.line()}.", err=True)
    for topic in shape.topics:
        data = explore.topic_json(shape, topic)
        if as_json:
            click.echo(json.dumps(data, ensure_ascii=False))
            continue
        named = "" if topic.label_source == "keywords" else f"   keywords: {', '.join(topic.keywords)}\n"
        central = "; ".join(item["title"] for item in data["central"])
        click.echo(f"{topic.id}. {topic.label} ({data['size']} posts)\n{named}   e.g. {central}")


def _shape_or_fail(storage, settings):
    from . import explore

    shape = explore.load(storage)
    if not shape.points:
        raise click.ClickException(
            f"no topics or map in {settings.database_label} yet: `ragserver topics` (or the "
            "next `ragserver ingest`) computes them")
    return shape


@cli.command(name="map")
@db_option
@click.option("--out", "out", required=True, metavar="FILE.svg|FILE.png",
              type=click.Path(dir_okay=False, writable=True),
              help="The picture to write: SVG or PNG, by its suffix.")
def map_command(db, out):
    """Draw the map of every post, coloured by topic with a legend, into an SVG or PNG file
    (the picture the /explore page shows)."""
    from pathlib import Path

    from .explore import draw

    suffix = Path(out).suffix.lower()
    if suffix not in (".svg", ".png"):
        raise click.BadParameter(f"must end in .svg or .png, not {Path(out).name!r}",
                                 param_hint="--out")
    settings = _settings(db)
    storage = _open(settings, must_exist=True, readonly=True)
    try:
        shape = _shape_or_fail(storage, settings)
    finally:
        storage.close()
    target = Path(out)
    partial = target.with_name(f".{target.name}.partial")
    try:
        if suffix == ".svg":
            partial.write_text(draw.map_svg(shape.points, shape.topics, links=False,
                                            legend=True) + "\n", encoding="utf-8")
        else:
            draw.map_png(shape.points, shape.topics, partial)
        partial.replace(target)  # never a half-written picture under the name asked for
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {out}: {error.strerror or error}") from None
    click.echo(f"wrote {out}: {len(shape.points)} posts, {len(shape.topics)} topics")


@cli.command()
@click.argument("start", metavar="A")
@click.argument("to", metavar="B")
@db_option
@click.option("-n", "number", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Posts to show at each end.")
@click.option("--json", "as_json", is_flag=True,
              help="Every post as one JSON object per line, from most A to most B.")
def axis(start, to, db, number, as_json):
    """Rank the posts along an axis from idea A to idea B ("practical how-to" "reflective
    essay"): each post's score is its similarity to B minus its similarity to A. Shows the
    posts at both ends and how the posts spread between them."""
    from . import explore

    for name, idea in (("A", start), ("B", to)):
        if not idea.strip():
            raise click.BadParameter("is empty: give a few words for each end", param_hint=name)
    settings = _settings(db)
    storage = _open(settings, must_exist=True, readonly=True)
    try:
        if storage.count_vectors() == 0:
            raise click.ClickException(_empty_message(storage, settings))
        embedder = _embedder(settings)
        line = explore.axis(storage, embedder, start, to)
        points = {p.post_id: p for p in storage.map_points()}
        posts = {p.id: p for p in storage.list_posts()}
    finally:
        storage.close()
    ranked = line.ranked()
    if as_json:
        for rank, (post_id, score) in enumerate(ranked, 1):
            post = posts[post_id]
            point = points.get(post_id)
            click.echo(json.dumps({"rank": rank, "source": post.source, "title": post.title,
                                   "url": post.url, "score": round(score, 4),
                                   "topic": point.topic if point else None},
                                  ensure_ascii=False))
        return
    show = min(number, (len(ranked) + 1) // 2)
    for heading, chosen in ((f"Most like {start!r}:", ranked[:show]),
                            (f"Most like {to!r}:", ranked[::-1][:show])):
        click.echo(heading)
        for post_id, score in chosen:
            click.echo(f"  [{score:+.3f}] {posts[post_id].title}\n"
                       f"           {posts[post_id].url or posts[post_id].source}")
    counts, low, high = line.histogram(bins=10)
    click.echo(f"\n{len(ranked)} posts from {start!r} ({low:+.3f}) to {to!r} ({high:+.3f}):")
    step = (high - low) / len(counts) if high > low else 0
    widest = max(counts) or 1
    for n, count in enumerate(counts):
        click.echo(f"  {low + n * step:+.3f} {'#' * round(30 * count / widest):<30} {count}")


def _empty_message(storage, settings) -> str:
    stats = storage.get_stats()
    if stats.vectors:
        return (f"The search index of {settings.database_label} is empty although {stats.vectors} "
                "passages are stored: run `ragserver reindex` to rebuild it.")
    return (f"No posts in {settings.database_label} yet. Add some with "
            "`ragserver ingest path/to/posts/`.")


@cli.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats(db, as_json):
    """Posts, passages, model and index size of the database."""
    settings = _settings(db)
    storage = _open(settings, must_exist=True, readonly=True)
    try:
        s = storage.get_stats()
    finally:
        storage.close()
    model = s.model
    figures = {
        "database": settings.database_label, "posts": s.posts, "passages": s.passages,
        "vectors": s.vectors, "index_rows": s.index_rows, "index_bytes": s.index_bytes,
        "database_bytes": s.db_bytes, "vector_index": s.vector_index,
        "index_generation": s.generation, "index_state": s.index_state,
        "model": model.name if model else None, "dimension": model.dimension if model else None,
        "query_prefix": model.query_prefix if model else None,
        "passage_prefix": model.passage_prefix if model else None,
    }
    if as_json:
        click.echo(json.dumps(figures))
        return
    if not s.posts:
        click.echo(f"No posts in {settings.database_label} yet. Add some with "
                   "`ragserver ingest path/to/posts/`.")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = repr(value) if key.endswith("prefix") and value is not None else value
        if key.endswith("bytes"):
            shown = f"{value:,} ({value / 1e6:.1f} MB)"
        click.echo(f"{key.replace('_', ' '):<{width}}  {shown}")
    if s.index_rows != s.vectors or s.index_state != "ok":
        click.echo(f"warning: the index holds {s.index_rows} rows for {s.vectors} vectors: "
                   "run `ragserver reindex`.", err=True)


@cli.command()
@db_option
@click.option("--quiet", "-q", is_flag=True, help="Only the summary line.")
def reindex(db, quiet):
    """Rebuild the vector index from the stored vectors; if the configured embedding model
    differs from the database's, re-embed every passage with it first."""
    import time

    from ragserver.ingest.pipeline import reembed_all

    from . import related

    settings = _settings(db)
    storage = _open(settings, must_exist=True)
    started = time.perf_counter()
    say = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    try:
        with _writing(settings.database, "reindex"):
            stored = storage.get_model_info()
            if stored is None:
                click.echo("Nothing to index: the database has no posts yet.")
                return
            embedder = _embedder(settings)
            if stored != embedder.info:
                say(f"re-embedding every passage: {stored.name} -> {embedder.info.name}")
                count = reembed_all(storage, embedder, settings.commit_rows,
                                    vector_index=settings.index_kind,
                                    on_batch=lambda n: say(f"  {n} passages re-embedded"))
                click.echo(f"re-embedded {count} passages with {embedder.info.name}; "
                           f"run `ragserver ingest` on your sources to re-split posts for it; "
                           f"{time.perf_counter() - started:.1f}s")
            else:
                count = storage.rebuild_index(settings.commit_rows,
                                           on_batch=lambda n: say(f"  {n} vectors indexed"),
                                           vector_index=settings.index_kind)
                lists = related.refresh(storage)
                click.echo(f"{settings.index_kind} index rebuilt: {count} vectors; related lists "
                           f"updated: {lists}; {time.perf_counter() - started:.1f}s")
    finally:
        storage.close()


@cli.command(name="copy")
@click.argument("src")
@click.argument("dst")
@click.option("--prune", is_flag=True,
              help="Delete the posts of DST that SRC does not have (without it such a DST "
                   "is refused).")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress: only errors and the summary line (for cron).")
def copy_command(src, dst, prune, quiet):
    """Copy the posts, passages and vectors of the database SRC into DST, without
    re-embedding, whichever storage backend holds each: SRC and DST are SQLite file paths
    or database URLs (postgresql://user@host/db). DST is created if missing.

    SRC is only read. A killed copy, run again, skips the posts DST already holds whole.
    DST's related posts are recomputed and both databases' counts compared at the end.
    Exit status: 0 copied, 75 an ingest holds DST's or SRC's lock, 1 error or counts that
    differ.
    """
    from .copying import CopyError, compare_counts, copy_database
    from .storage import backend_of, redacted, same_target, scrub

    settings = _settings(None)
    src, dst = (t if "://" in t else os.path.expanduser(t) for t in (src, dst))
    for given in (src, dst):
        try:
            backend_of(given)
        except ValueError as error:
            raise click.ClickException(f"cannot open {redacted(given)}: {error}; nothing was "
                                       "copied.") from None
    if same_target(src, dst):
        raise click.ClickException(f"SRC and DST are the same database ({redacted(src)}); "
                                   "nothing was copied.")
    source = _open_target(src, readonly=True)
    try:
        with _writing(dst, "copy", src), _source_lock(src):
            target = _open_target(dst, create=True, hide=src)
            progress = _CopyProgress(quiet)
            try:
                summary = copy_database(source, target, commit_rows=settings.commit_rows,
                                        vector_index=settings.vector_index, prune=prune,
                                        on_event=progress.event)
                differ = compare_counts(source, target)
                own = source.get_stats()
            except CopyError as error:
                raise click.ClickException(scrub(str(error), src, dst)) from None
            finally:
                progress.close()
                target.close()
    finally:
        source.close()
    click.echo(summary.line())
    if differ:
        counts = "; ".join(f"{what.replace('_', ' ')} {a} in {redacted(src)}, {b} in "
                           f"{redacted(dst)}" for what, a, b in differ)
        hint = (f"{redacted(src)}'s own index holds {own.index_rows} rows for {own.vectors} "
                "vectors: `ragserver reindex` it, then copy again."
                if own.index_rows != own.vectors else
                "Run the same command again to finish the copy.")
        raise click.ClickException(f"the copy does not match its source: {counts}. {hint}")


def _open_target(target: str, *, readonly: bool = False, create: bool = False,
                 hide: str | None = None):
    """Open a database given as a path or URL, for a command that names it itself; every
    failure is a clear message without a password of `target` or `hide`."""
    from .storage import BackendUnavailable, NotADatabase, exists, open_storage, redacted, scrub

    if not create and not exists(target):
        raise click.ClickException(f"no database at {target}; nothing was copied.")
    try:
        return open_storage(target, readonly=readonly, create=create)
    except (BackendUnavailable, NotADatabase) as error:
        message = f"{error}; nothing was copied."
    except Exception as error:  # no such backend, driver errors: unreadable, refused
        message = f"cannot open {redacted(target)}: {error}; nothing was copied."
    raise click.ClickException(scrub(message, target, *([hide] if hide else [])))


@contextmanager
def _source_lock(target: str):
    """Hold the source's writer lock too, so that no ingest changes it mid-copy; a source
    on read-only media (where nothing can change it) is read without it."""
    from .storage import CannotWrite, writer_lock

    with ExitStack() as stack:
        try:
            stack.enter_context(writer_lock(target))
        except CannotWrite:
            pass
        yield


class _CopyProgress:
    """A tqdm bar on a terminal; otherwise a line per transaction; nothing with --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.copied = self.skipped = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc="copy", unit=" posts", file=sys.stderr, dynamic_ncols=True)

    def event(self, kind: str, name: str) -> None:
        """kind: copied, skipped, deleted (a post), committed (posts done/posts in all)."""
        self.copied += kind == "copied"
        self.skipped += kind == "skipped"
        if self.bar is not None:
            if kind in ("copied", "skipped"):
                self.bar.update(1)
        elif not self.quiet and kind == "deleted":
            click.echo(f"deleted {name}", err=True)
        elif not self.quiet and kind == "committed":
            done, total = name.split("/")
            click.echo(f"{done} of {total} posts: {self.copied} copied, {self.skipped} "
                       "already there", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@cli.command()
@click.argument("question")
@db_option
@click.option("-n", "number", type=click.IntRange(1, 50), default=None,
              help="Passages to retrieve (default: RAGSERVER_RETRIEVE_K).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per event: sources, token, done or error.")
def ask(question, db, number, as_json):
    """Answer QUESTION from the blog's posts, offline: first the sentences of the posts that
    best answer it, quoted; then the model's answer as it is written, with what the sources
    do not support marked; then the numbered sources."""
    from .answer import Options, answer
    from .gate import Gate
    from .llm import LLMError, load_chat_model

    if not question.strip():
        raise click.ClickException("the question is empty")
    settings = _settings(db)
    storage = _open(settings, must_exist=True, readonly=True)
    model = None
    try:
        if storage.index_is_empty():
            raise click.ClickException(_empty_message(storage, settings))
        try:
            model = load_chat_model(settings, serving=False)
            if model is not None and hasattr(model, "start"):
                model.start()  # the model process loads while the embedder does
        except LLMError as error:
            raise click.ClickException(str(error)) from None
        embedder = _embedder(settings)
        try:
            if model is not None:
                model.count_tokens("load")  # a missing or broken model fails before retrieval
        except LLMError as error:
            raise click.ClickException(f"{error}. `ragserver doctor` checks the models.") from None
        sources, checked, failed, printed = [], None, None, ""
        options = Options.from_settings(settings, **({"k": number} if number else {}))
        for event in answer(question, [], db=storage, embedder=embedder, model=model, gate=Gate(),
                            options=options):
            if as_json:
                data = {"text": event.data} if event.kind == "token" else event.data
                click.echo(json.dumps({"event": event.kind, "data": data}, ensure_ascii=False))
            elif event.kind == "quick":
                _print_quick(event.data, answer_follows=model is not None)
            elif event.kind == "token":
                click.echo(event.data, nl=False)
                printed += event.data
            if event.kind == "sources":
                sources = event.data
            elif event.kind == "checked":
                checked = event.data
            elif event.kind == "error":
                failed = event.data["message"]
    finally:
        storage.close()
        if model is not None and hasattr(model, "close"):
            model.close()
    if failed:
        if not as_json:
            click.echo("", err=True)  # end the partial answer's line
        raise click.ClickException(failed)
    if not as_json:
        click.echo("\n")
        if checked:
            _print_checks(checked, printed)
        for s in sources:
            label = " › ".join([s["title"], *s["headings"]])
            click.echo(f"[{s['n']}] {label} — {s['link'] or s['source']}")


def _one_line(text: str, length: int) -> str:
    """Text on one line, whitespace collapsed, cut at `length` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat[:length] + ("…" if len(flat) > length else "")


def _print_quick(quick: dict, answer_follows: bool) -> None:
    """The quoted quick answer, then a heading for the model's answer below it."""
    click.echo(f"From the posts [{quick['n']}] {quick['title']}:")
    for line in quick["text"].splitlines():
        click.echo(f"> {line}".rstrip())
    click.echo()
    if answer_follows:
        click.echo("Answer:")


def _print_checks(checked: dict, printed: str) -> None:
    """What the grounding checks found in the answer just `printed`."""
    if checked["looped"]:
        click.echo("(The model began repeating itself; the repeats are cut.)")
    if checked["removed_citations"]:
        click.echo(f"(Removed citations of sources the model was not given: "
                   f"{', '.join(f'[{n}]' for n in checked['removed_citations'])}.)")
    cited_by_check = [s for s in checked["segments"] if s["kind"] == "prose" and s["supported"]
                      and s["sources"] and s["text"] not in printed]
    if cited_by_check:
        click.echo("Found in the sources, though the model did not cite them:")
        for segment in cited_by_check:
            uncited = re.sub(r"\s*" + CITATION.pattern, "", segment["text"])
            click.echo(f"  [{segment['sources'][0]}] {_one_line(uncited, 150)}")
    unsupported = [s for s in checked["segments"] if s["supported"] is False]
    if unsupported:
        click.echo(f"Not found in the sources ({len(unsupported)} of "
                   f"{checked['judged']} checked), check before relying on it:")
        for segment in unsupported:
            click.echo(f"  ⚠ {_one_line(segment['text'], 160)}")
    if not checked["cited"] and checked["segments"]:
        click.echo("This answer cites none of the sources below: check it against them.")
    click.echo()


@cli.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts and checks as JSON.")
@click.option("--checks-only", is_flag=True,
              help="Only load each model in a child process and make it produce output "
                   "(what ./run setup runs at its end).")
def doctor(db, as_json, checks_only):
    """What an operator needs when something is wrong: versions, CPU and llama.cpp build,
    threads, model files with sizes and hashes, the database; then each model is loaded in
    a child process of its own and made to produce output. Exit status 1 when a check
    fails or the database needs attention."""
    from dataclasses import asdict

    from . import doctor as doc

    settings = _settings(db)
    facts = {} if checks_only else doc.report(settings)
    if facts and not as_json:
        _print_facts(facts, doc.database_problem(facts["database"]))
        click.echo("checks (each model in a child process):")
    checks = []
    for check in doc.run_checks(settings):
        checks.append(check)
        if not as_json:
            click.echo(f"  {'ok' if check.ok else 'FAILED':<7}{check.name:<17}{check.detail}")
            if check.hint:
                click.echo(f"  {'':<7}{'':<17}what to do: {check.hint}")
    problem = doc.database_problem(facts["database"]) if facts else ""
    if as_json:
        click.echo(json.dumps({**facts, "checks": [asdict(c) for c in checks],
                               "database_problem": problem or None}))
    no_database_yet = facts and not facts["database"]["exists"]
    if not all(c.ok for c in checks) or (problem and not no_database_yet):
        sys.exit(EXIT_ERROR)


def _print_facts(facts: dict, problem: str) -> None:
    def size(n: int) -> str:
        return f"{n / 1e6:,.1f} MB"

    def model_file(f: dict) -> str:
        if not f.get("exists"):
            return f"{f.get('path')} (missing)"
        pinned = {True: ", the pinned file", False: ", NOT the pinned file",
                  None: ""}[f.get("pinned_file")]
        return f"{f['path']}, {size(f['bytes'])}, sha256 {f['sha256']}{pinned}"

    v, c, ll, t = facts["versions"], facts["cpu"], facts["llama_cpp"], facts["threads"]
    am, em, d = facts["answer_model"], facts["embedding_model"], facts["database"]
    lines = [("versions", ", ".join(f"{k} {val}" for k, val in v.items() if val)),
             ("cpu", f"{c['model']} ({c['machine']}), {c['cores']} cores usable; advertises "
                     f"{' '.join(c['advertises']) or 'no vector extensions'}"),
             ("llama.cpp", f"built with {ll['options'] or 'unknown options (not built by ./run)'}"),
             ("", f"uses {ll['uses']}"),
             ("threads", f"answer model {t['answer_model_generating']} generating, "
                         f"{t['answer_model_reading_prompt']} reading prompts; embedding "
                         f"{t['embedding_in_web_server']} per web query, "
                         f"{t['embedding_in_commands']} in commands")]
    if am["backend"] == "remote":
        lines.append(("answer model", f"remote: {am['url']} {am['model'] or ''}".rstrip()))
    elif am["backend"] == "none":
        lines.append(("answer model", "none: answers quote the posts, no language model"))
    elif "error" in am:
        lines.append(("answer model", am["error"]))
    else:
        if "name" in am:
            lines.append(("answer model", f"{am['name']}: {am['title']}, {am['licence']}"))
            lines.append(("", f"from {am['provenance']}"))
        lines.append(("" if "name" in am else "answer model", model_file(am)))
    lines.append(("embeddings", f"{em['name']} from {em['location']}; prefixes "
                                f"{em['prefixes'][0]!r} / {em['prefixes'][1]!r}"))
    if "weights" in em:
        lines.append(("", model_file(em["weights"])))
    if not d["exists"]:
        lines.append(("database", f"{d['path']} (not created yet)"))
    elif "error" in d and "posts" not in d:
        lines.append(("database", f"{d['path']}: {d['error']}"))
    else:
        matches = {True: "matches the configured one", False: "DIFFERS from the configured one",
                   None: "none yet"}[d.get("embedding_model_matches")]
        lines.append(("database", f"{d['path']}, {size(d['bytes'])}, schema {d['schema_version']}"))
        lines.append(("", f"{d['posts']} posts, {d['passages']} passages, {d['vectors']} vectors; "
                          f"{d['index']} index: {d['index_rows']} rows, {d['index_state']}"))
        lines.append(("", f"embedding model {d.get('embedding_model')}: {matches}"))
        lines.append(("", ", ".join(f"{k} {val}" for k, val in d["software"].items())))
    if problem:
        lines.append(("", f"attention: {problem}"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key:<{width}}  {value}")
    click.echo()



def _activity(settings):
    """The activity store the settings name, or exit saying it is turned off."""
    from .activity import open_activity

    store = open_activity(settings)
    if store is None:
        raise click.ClickException("RAGSERVER_ACTIVITY_DB is off: this server keeps no activity.")
    return store


def _age(value: str) -> float:
    from .activity import parse_age

    try:
        return parse_age(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@cli.group()
def activity():
    """What readers did on the web app: prune it or export it.

    Conversations, answers, feedback and searches that found nothing are kept in the
    activity store (activity.db beside a SQLite posts file, or activity_* tables in
    PostgreSQL) for RAGSERVER_ACTIVITY_DAYS days.
    """


@activity.command(name="prune")
@db_option
@click.option("--days", type=click.IntRange(0, None), default=None,
              help="Delete what is older than this many days (default: RAGSERVER_ACTIVITY_DAYS).")
def activity_prune(db, days):
    """Delete activity older than the retention period now (the web app also prunes hourly)."""
    from .activity import ActivityUnavailable

    settings = _settings(db)
    store = _activity(settings)
    if days is None and settings.activity_days == 0:
        raise click.ClickException("RAGSERVER_ACTIVITY_DAYS is 0 (keep everything): "
                                   "say how much to keep with --days N.")
    days = settings.activity_days if days is None else days
    try:
        removed = store.prune(days)
    except ActivityUnavailable as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{store.label}: removed {removed['turns']} answer(s), {removed['feedback']} "
               f"feedback mark(s) and {removed['searches']} search(es) older than {days} day(s).")


@activity.command(name="export")
@db_option
@click.option("--since", default=None, metavar="AGE",
              help="Only what is newer than this: 30d, 12h, 2w (default: everything kept).")
def activity_export(db, since):
    """Print every kept record as NDJSON (one JSON object per line, with a "type": turn,
    feedback or empty_search), oldest first."""
    import time

    from .activity import ActivityUnavailable

    store = _activity(_settings(db))
    start = 0.0 if since is None else time.time() - _age(since)
    try:
        for record in store.export(start):
            click.echo(json.dumps(record, ensure_ascii=False))
    except ActivityUnavailable as error:
        raise click.ClickException(str(error)) from None


@cli.command()
@db_option
@click.option("--since", default="30d", show_default=True, metavar="AGE",
              help="The period to report on: 30d, 12h, 2w.")
@click.option("-n", "top", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Entries per section.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def report(db, since, top, as_json):
    """What readers asked: the most asked questions grouped by meaning, questions the blog
    could not answer grouped into themes (what to write next), answers marked down,
    searches that found nothing and the posts answers cited most."""
    from .activity import ActivityUnavailable
    from .report import build_report, format_report

    settings = _settings(db)
    store = _activity(settings)
    seconds = _age(since)
    try:
        result = build_report(store, _embedder(settings), since=seconds,
                              min_score=settings.min_score, top=top)
    except ActivityUnavailable as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        click.echo(format_report(result))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--debug", is_flag=True, help="Reload on code changes; show tracebacks.")
def serve(host, port, debug):
    """Run the web app with Flask's development server (use the Procfile's gunicorn in
    production)."""
    from . import create_app

    create_app().run(host=host, port=port, debug=debug, threaded=True)


@cli.command(name="model-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8001, show_default=True, type=int)
def model_server(host, port):
    """Serve the configured answer model (RAGSERVER_LLM_MODEL) over an OpenAI-compatible
    API with llama.cpp's server: one model for every web worker and machine, which then
    set RAGSERVER_LLM_URL=http://HOST:PORT. Runs until stopped."""
    import os

    from .llm import LLMError, resolve_gguf

    settings = _settings(None)
    try:
        path = resolve_gguf(settings.llm_model, settings.model_dir)
    except LLMError as error:
        raise click.ClickException(str(error)) from None
    if path is None:
        raise click.ClickException("RAGSERVER_LLM_MODEL is none: there is no model to serve")
    threads, batch_threads = settings.llm_thread_counts
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", host,
            "--port", str(port), "--n_ctx", str(settings.llm_context), "--n_threads",
            str(threads), "--n_threads_batch", str(batch_threads), "--verbose", "false"]
    click.echo(f"serving {path.name} at http://{host}:{port}/v1 ({threads} threads)", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # the server in this process: signals reach it directly
