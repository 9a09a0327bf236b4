"""The key table of docs/config.md, generated from the pydantic models (``python -m histowsss.config_docs``)."""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from histowsss.config import RunConfig

TABLE_HEADER = "| key | type | default | meaning |\n| --- | --- | --- | --- |\n"


def _type_name(annotation) -> str:
    text = repr(annotation) if typing.get_origin(annotation) is not None else getattr(annotation, "__name__", repr(annotation))
    text = text.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    text = re.sub(r"Optional\[(.*)\]", r"\1 / None", text)
    text = re.sub(r"Union\[(.*), None\]", r"\1 / None", text)
    return text.replace(" | ", " / ")


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = len(args) == 1 and type(None) in typing.get_args(ann)
        inner = args[0] if optional else ann
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            doc = (inner.__doc__ or "").strip().splitlines()[0] if inner.__doc__ else ""
            required = field.default is PydanticUndefined and field.default_factory is None
            kind, default = ("section / None", repr(field.default)) if optional else (
                "section", "'required'" if required else "")
            rows.append(f"| `{key}` | {kind} | {default} | {doc} |")
            rows += _rows(inner, key + ".")
            continue
        if field.default is PydanticUndefined and field.default_factory is None:
            default = "'required'"
        elif field.default_factory is not None:
            default = repr(field.default_factory())
        else:
            default = repr(field.default)
        desc = (field.description or "").replace("|", "/")
        rows.append(f"| `{key}` | {_type_name(ann)} | {default} | {desc} |")
    return rows


def key_table() -> str:
    """Markdown table of every configuration key: type, default, meaning."""
    return TABLE_HEADER + "\n".join(_rows(RunConfig)) + "\n"


def update(path: Path) -> bool:
    """Rewrite the table at the end of ``path``; True if the file changed."""
    text = path.read_text()
    head = text[: text.index(TABLE_HEADER)] if TABLE_HEADER in text else text.rstrip() + "\n\n"
    new = head + key_table()
    if new == text:
        return False
    path.write_text(new)
    return True


if __name__ == "__main__":
    # (the repository's docs/config.md, wherever the command is run from, in a source checkout)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "docs" / "config.md"
    if not target.is_file():
        sys.exit(f"error: {target} not found; name the file to rewrite: python -m histowsss.config_docs PATH")
    print(f"{target}: {'updated' if update(target) else 'up to date'}")
