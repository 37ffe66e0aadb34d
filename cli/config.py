"""`rag config show`: the effective settings."""

from __future__ import annotations

import typer

from cli.common import out, settings_of

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings (file + environment + defaults) as TOML."""
    import tomli_w

    settings = settings_of(ctx)
    # TOML has no null: unset optional keys are listed as comments so they stay discoverable.
    data = settings.model_dump(mode="json", exclude_none=True)
    if data["llm"]["api_key"] not in ("", "EMPTY"):
        data["llm"]["api_key"] = "***"  # never print a secret
    out.print(tomli_w.dumps(data), end="", highlight=False, markup=False)
    unset = [
        f"{section}.{key}"
        for section, values in settings.model_dump(mode="json").items()
        if isinstance(values, dict)
        for key, value in values.items()
        if value is None
    ]
    for key in unset:
        out.print(f"# {key} is unset", highlight=False, markup=False)
