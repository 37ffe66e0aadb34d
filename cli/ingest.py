"""`rag ingest`: files and folders into a knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import err, exit_code, fail, settings_of
from rag.config import Settings
from rag.store import KBError


def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="files and folders to ingest (folders recursively)")],
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base name (default: settings.default_kb)")] = None,
    glob: Annotated[
        str | None, typer.Option("--glob", help="only files whose name or path matches, e.g. '*.pdf'")
    ] = None,
    sync: Annotated[bool, typer.Option("--sync", help="also remove documents whose files are gone from PATHS")] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="parse and embed on Ray: the cluster in ingest.ray, or a Ray runtime started on this machine",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            metavar="ADDRESS",
            help="parse and embed on this Ray cluster: 'auto' (the one this machine joined with `ray start`), "
            "ray://head:10001 or head:6379",
        ),
    ] = None,
) -> None:
    """Load, chunk and embed documents into a knowledge base.

    Re-running skips unchanged files and replaces changed ones. Exit status: 0 all files
    ingested, 1 some could not be (the rest are committed), 2 usage or configuration error,
    75 the knowledge base is being written by another process (try again later).
    """
    from cli.ingest_display import RichProgress, print_report
    from ingest.cluster import ClusterError
    from ingest.pipeline import IngestPipeline, open_for_ingest
    from rag.embed import Embedder
    from rag.models import ModelNotAvailable

    settings = _on_ray(settings_of(ctx), ray, ray_address)
    name = settings.kb_name(kb)
    embedder = Embedder(settings.embed)
    try:
        base = open_for_ingest(settings, name, embedder)
        pipeline = IngestPipeline(settings, embedder, base)
        with RichProgress(err) as progress:
            report = pipeline.run(paths, pattern=glob, sync=sync, progress=progress)
    except KBError as exc:
        raise fail(str(exc), exit_code(exc)) from exc
    except (ModelNotAvailable, ValueError, ClusterError) as exc:
        raise fail(str(exc)) from exc
    print_report(name, report)
    raise typer.Exit(report.exit_code)


def _on_ray(settings: Settings, ray: bool, address: str | None) -> Settings:
    """--ray uses the configured cluster (ingest.ray), else a local runtime; --ray-address names one."""
    where = address or (settings.ingest.ray or "local" if ray else None)
    if where is None:
        return settings
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"ray": where})})
