"""The `histowsss` command."""

from __future__ import annotations

import typer

from histowsss.cli import data_cmd, demo_cmd, export_cmd, init_cmd, predict_cmd, report_cmd, run_cmd, tune_cmd

app = typer.Typer(help="histowsss: weakly supervised segmentation of H&E images.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(data_cmd.app, name="data")
app.command("init")(init_cmd.init)
app.command("run")(run_cmd.run)
app.command("steps")(run_cmd.steps)
app.command("demo")(demo_cmd.demo)
app.command("predict")(predict_cmd.predict)
app.command("report")(report_cmd.report)
app.command("export")(export_cmd.export)
app.command("tune")(tune_cmd.tune)


def main() -> None:
    from histowsss.cli.common import plain_warnings

    plain_warnings()
    app()


if __name__ == "__main__":
    main()
