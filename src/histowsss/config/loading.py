"""Reading a config: a YAML file or a builtin name, ``key=value`` overrides typed by the field they set, keys
given twice refused, errors that name each key; and writing the resolved config."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from histowsss.config.base import ConfigError
from histowsss.config.run import RunConfig


BUILTIN_CONFIGS = ("demo", "glas-gland", "glas-malignant", "glas-gland-gpu", "glas-malignant-gpu")


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped with the package (e.g. 'glas-gland')."""
    p = resources.files("histowsss") / "configs" / f"{name}.yaml"
    return Path(str(p))


_NULLS = ("", "null", "Null", "NULL", "~")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _field_type(keys: list[str]) -> Any:
    """The annotation of the config field at ``keys`` (through sections and dicts); None when unknown."""
    node: Any = RunConfig
    for k in keys:
        while get_origin(node) in (Union, UnionType):  # X | None: the non-None part
            args = [a for a in get_args(node) if a is not type(None)]
            node = args[0] if len(args) == 1 else None
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(k)
            node = field.annotation if field is not None else None
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            return None
    return node


def _wants_text(annotation: Any) -> bool:
    """True for a field whose values are text only (str, Path, a Literal of strings; optionally None)."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) \
        else [annotation]
    if get_origin(args[0] if args else None) is Literal:
        return all(isinstance(v, str) for a in args for v in get_args(a))
    return bool(args) and all(a in (str, Path) for a in args)


def _wants_text_list(annotation: Any) -> bool:
    """True for a list whose items are text only (``list[str]``; optionally None)."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) in (Union, UnionType) \
        else [annotation]
    return len(args) == 1 and get_origin(args[0]) is list and _wants_text(get_args(args[0])[0])


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse 'a.b.c=value' into (['a','b','c'], value).

    The value is read as YAML (numbers, booleans, null, [lists], {mappings}), except where it is text: for a field
    that only holds text (a name, a path, a colour, a separator) the value is taken as written (``name=2024``,
    ``colors.benign=#ff0000``, ``label_separator=|``, a path with ``#`` or ``: `` in it); quotes may still be used.
    A list of texts keeps its items as written too (``data.test_splits=[01, yes]`` -> ['01', 'yes']).
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. train_cam.epochs=3)")
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    raw = value.strip()
    quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
    field = _field_type(keys)
    if _wants_text(field) and not quoted:
        return keys, None if raw in _NULLS else raw
    if _wants_text_list(field) and raw[:1] == "[":
        try:  # every item as written: YAML would read 01 as 1 and yes as true
            return keys, yaml.load(value, Loader=yaml.BaseLoader)  # noqa: S506 (BaseLoader builds only str/list/dict)
        except yaml.YAMLError as e:
            problem = str(e).strip().splitlines()[0]
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); "
                              "write lists as [a, b]") from None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        if raw[:1] in "[{":
            problem = str(e).strip().splitlines()[0]
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); "
                              "write lists as [a, b] and mappings as {k: v}") from None
        return keys, raw  # text YAML cannot read (',', '&', '*x'): as written
    if quoted:
        return keys, parsed
    if parsed is None and raw not in _NULLS or parsed == "" and raw != "":
        return keys, raw  # '#...' (a comment to YAML), '|' or '>' (block markers): as written
    if isinstance(parsed, (dict, list)) and raw[:1] not in "[{":
        return keys, raw  # 'a: b' or '- a' inside a text value
    if isinstance(parsed, str) and _NUMBER.fullmatch(raw):  # YAML 1.1 reads '1e-4' as a string
        return keys, float(raw)
    if isinstance(parsed, str) and parsed != raw:
        return keys, raw  # YAML cut it short (e.g. at ' #')
    return keys, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config dict (in place) and return it."""
    for ov in overrides:
        keys, value = parse_override(ov)
        node = raw
        for k in keys[:-1]:
            if node.get(k) is None:  # an absent section, or one written as null (a run folder's config.yaml)
                node[k] = {}
            if not isinstance(node[k], dict):
                raise ConfigError(f"override {ov!r}: {k!r} is not a section")
            node[k] = dict(node[k])  # its own copy: a YAML alias may share the mapping with another section
            node = node[k]
        node[keys[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently, which drops
    a whole section written twice)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges a mapping; its keys may repeat
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(source: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (a path or a builtin name) and apply ``key=value`` overrides."""
    path = Path(source)
    if not path.is_file():
        if str(source) in BUILTIN_CONFIGS:
            path = builtin_config_path(str(source))
        else:
            raise ConfigError(
                f"config file {source} not found; pass a YAML path or one of the builtin names: "
                f"{', '.join(BUILTIN_CONFIGS)}"
            )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    apply_overrides(raw, overrides or [])
    given = {".".join(parse_override(ov)[0]): ov for ov in overrides or []}  # key -> the --set as written
    return validate_config(raw, origin=str(path), overrides=given)


def validate_config(raw: dict[str, Any], origin: str = "config", overrides: dict[str, str] | None = None
                    ) -> RunConfig:
    """Validate a raw dict; errors name each offending key path, and the ``--set`` that gave it (``overrides``:
    dotted key -> the override as written) rather than the file when one did."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            # (a --set of the key, of a key inside it, or of a section unknown as a whole)
            unknown = err["type"] == "extra_forbidden"
            ov = next((o for k, o in (overrides or {}).items()
                       if loc == k or loc.startswith(k + ".") or (unknown and k.startswith(loc + "."))), None)
            via = f" (from --set {ov}, not the file)" if ov else ""
            if unknown:
                near = _near_key(err["loc"])
                lines.append(f"unknown key '{loc}'{via} (" + (f"did you mean '{near}'? " if near else "check the "
                             "spelling; ") + "see docs/config.md for the keys of each section)")
            else:
                lines.append(f"'{loc}'{via}: {err['msg']}")
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(lines)) from None


def _near_key(loc: tuple) -> str | None:
    """The known key closest to the unknown one at ``loc`` (same section), dotted; None when none is close."""
    import difflib

    model: Any = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, UnionType) or get_origin(ann) is Union:  # (Optional[Section])
            ann = next((a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        model = ann
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    near = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return ".".join([*map(str, loc[:-1]), near[0]]) if near else None


def dump_config(cfg: RunConfig) -> str:
    """YAML text of the resolved config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
