"""`histowsss init MANIFEST --out CONFIG.yaml`: a config for the user's own data."""

from __future__ import annotations

import shlex

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from histowsss.cli.common import check_out_file, class_colours, class_values, clear_errors, comma_list, console


def init(manifest: Path = typer.Argument(..., help="manifest CSV (image, split, patient, label[, mask])"),
         out: Path = typer.Option(..., "--out", "-o", help="config YAML to write"),
         profile: str = typer.Option("cpu", help="cpu (the CPU profile measured on GlaS) or gpu (full resolution, "
                                     "larger crops, longer schedules)"),
         background: Optional[str] = typer.Option(None, help="the background / normal class (guessed from names "
                                                  "such as normal, benign, background); 'none' when every pixel is "
                                                  "one of the classes (tissue types)"),
         label_column: Optional[str] = typer.Option(None, help="column of class names (default: label)"),
         label_columns: Optional[str] = typer.Option(None, help="comma-separated columns, one per class, holding 1 / 0 "
                                                     "(one-hot or multi-hot labels; default: found when there is no "
                                                     "label column)"),
         classes: Optional[str] = typer.Option(None, help="comma-separated class names in the order class-id masks "
                                               "use (mask value 0 = the first); default: background first, then "
                                               "alphabetical"),
         mask_mode: Optional[str] = typer.Option(None, help="class_ids, binary or binary_image_label (default: "
                                                 "read from the masks)"),
         mask_ignore: Optional[str] = typer.Option(None, help="comma-separated mask values that are no class, left out "
                                                   "of every score (e.g. 4 for LUAD-HistoSeg / BCSS-WSSS)"),
         mask_colors: Optional[str] = typer.Option(None, help="colour masks: comma-separated CLASS=#rrggbb, and "
                                                   "ignore=#rrggbb for a colour that is no class; a class named twice takes both"),
         mask_values: Optional[str] = typer.Option(None, help="masks whose values are not the class positions: "
                                                   "comma-separated CLASS=VALUE, and ignore=VALUE (e.g. QuPath's "
                                                   "labelled tiles: 'tumour=1,stroma=2,ignore=0'; a class named twice takes both)"),
         mpp: Optional[float] = typer.Option(None, help="microns per pixel of the images: the network then works at "
                                             "the resolution the profile was measured at"),
         image_scale: Optional[float] = typer.Option(None, help="resize factor on read (instead of --mpp)"),
         label_separator: Optional[str] = typer.Option(None, help="separator of several labels in one cell (default: "
                                                       "found in the labels among ';', ',', '|', '+')"),
         name: Optional[str] = typer.Option(None, help="run name (default: the file stem of --out)"),
         overwrite: bool = False) -> None:
    """Write a config for your own manifest: the image-label profile measured on GlaS, fitted to your data
    (classes, background, splits, mask mode, resolution, crop sizes)."""
    from histowsss.config_init import config_for_manifest
    from histowsss.engine.atomic import write_text

    with clear_errors():
        check_out_file(out, overwrite, reads=(manifest,), example="config.yaml")
        ignore = comma_list(mask_ignore, "--mask-ignore", int, "4")
        made = config_for_manifest(manifest, profile=profile, background=background, label_column=label_column,
                                   mask_mode=mask_mode, mpp=mpp, image_scale=image_scale, name=name, out=out,
                                   mask_ignore=ignore, label_separator=label_separator,
                                   label_columns=[c.strip() for c in label_columns.split(",") if c.strip()]
                                   if label_columns else None,
                                   classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
                                   mask_colors=class_colours(mask_colors),
                                   mask_values=class_values(mask_values))
        write_text(out, made.text)
    for n in made.notes:
        console.print(f"- {escape(n)}", highlight=False)
    q = shlex.quote  # the lines can be pasted even where paths hold spaces
    console.print(f"wrote {escape(str(out))}\nnext: histowsss data check {escape(q(str(manifest)))} --config "
                  f"{escape(q(str(out)))}\n      histowsss run {escape(q(str(out)))} "
                  f"--run {escape(q('runs/' + made.config.name))}", highlight=False)
