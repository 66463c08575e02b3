"""Tool schemas derived from typed, documented Python functions — one source of truth.

The JSON schema the LLM sees and the validation of the arguments it sends both come from the
function's signature and its Google-style docstring, so they cannot drift apart:

- types from annotations: ``int``, ``float``, ``bool``, ``str``, ``list[...]``, ``dict[str, ...]``,
  ``Literal[...]`` (an enum), ``Optional[X]`` / ``X | None`` (null allowed);
- a parameter with a default is not required;
- descriptions from the ``Args:`` section (``name: text`` or ``name (type): text``, continuation
  lines indented), the tool description from the docstring's text before the sections;
- ranges from ``typing.Annotated[float, Range(min, max)]``;
- a parameter group: ``**knobs`` plus ``groups={"knobs": [ExtraParameter(...), ...]}`` puts each
  ``ExtraParameter`` into the schema as an optional argument, and the call passes them as keywords.
  So one table (``agent.rounds.knobs``) gives several tools the same parameters without copied signatures.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for a number, used as ``Annotated[float, Range(0.0, 1.0)]``."""

    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class ExtraParameter:
    """One optional parameter of a group that ``tool_spec`` expands in place of ``**name``."""

    name: str
    annotation: Any
    description: str = ""


class ToolArgumentError(ValueError):
    """The model's arguments do not fit the tool's schema; the message goes back to the model."""


# Checked before json.loads: a hostile or confused model can send nesting deep enough to blow Python's
# recursion limit inside the parser (RecursionError is no JSONDecodeError) or megabytes of text.
# No tool takes anything near these; the error tells the model what to send instead.
MAX_ARGUMENT_CHARS = 100_000
MAX_ARGUMENT_DEPTH = 32


def parse_json_arguments(text: str) -> Any:
    """``json.loads(text)`` within the size and nesting bounds; every failure is a ``ToolArgumentError``."""
    if len(text) > MAX_ARGUMENT_CHARS:
        raise ToolArgumentError(f"the arguments are {len(text):,} characters long, over the limit of "
                                f"{MAX_ARGUMENT_CHARS:,}; send a short JSON object")
    depth = _nesting_depth(text)
    if depth > MAX_ARGUMENT_DEPTH:
        raise ToolArgumentError(f"the arguments are nested {depth:,} levels deep, over the limit of "
                                f"{MAX_ARGUMENT_DEPTH}; send a flat JSON object")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolArgumentError(f"the arguments are not valid JSON ({exc.msg} at character {exc.pos}); "
                                "send one JSON object matching the schema") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise ToolArgumentError(f"the arguments cannot be parsed ({exc}); send one JSON object matching the schema") from None


def _nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting outside JSON strings (a scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    function: Callable[..., Any]

    def openai_schema(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def parse_arguments(self, raw: str | dict | None) -> dict:
        """Parse the model's JSON argument string and validate it against the schema."""
        if isinstance(raw, dict):
            arguments = raw
        else:
            text = (raw or "").strip()
            if not text:
                arguments = {}
            else:
                try:
                    arguments = parse_json_arguments(text)
                except ToolArgumentError as exc:
                    raise ToolArgumentError(f"{self.name}: {exc}") from None
        if not isinstance(arguments, dict):
            raise ToolArgumentError(f"{self.name}: the arguments must be a JSON object, got {type(arguments).__name__}")
        return validate_arguments(self.parameters, arguments, self.name)

    def __call__(self, **kwargs: Any) -> Any:
        return self.function(**kwargs)


def tool_spec(function: Callable[..., Any], name: str | None = None,
              groups: dict[str, list[ExtraParameter]] | None = None) -> ToolSpec:
    """Derive the tool's schema from ``function``'s signature and docstring.

    ``groups`` names the parameter groups that stand for ``**<name>`` in the signature.
    """
    doc = inspect.getdoc(function) or ""
    summary, arg_docs = parse_docstring(doc)
    hints = typing.get_type_hints(function, include_extras=True)
    properties: dict[str, dict] = {}
    required: list[str] = []
    for param in inspect.signature(function).parameters.values():
        if param.kind is param.VAR_KEYWORD and groups and param.name in groups:
            for extra in groups[param.name]:
                schema = type_schema(extra.annotation)
                if extra.description:
                    schema["description"] = extra.description
                properties[extra.name] = schema
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == "self":
            continue
        if param.name not in hints:
            raise TypeError(f"tool {function.__name__}: parameter {param.name!r} has no type annotation")
        schema = type_schema(hints[param.name])
        if param.name in arg_docs:
            schema["description"] = arg_docs[param.name]
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif param.default is not None and _json_safe(param.default):
            schema["default"] = param.default
        properties[param.name] = schema
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return ToolSpec(name or function.__name__, summary, parameters, function)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(text before the first section, {argument: description}) from a Google-style docstring."""
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    name_indent: int | None = None  # indentation of argument names; deeper lines continue the previous one
    for line in doc.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(stripped)
        if header and indent == 0:
            section, current, name_indent = header.group(1), None, None
            continue
        if section is None:
            summary_lines.append(stripped)
        elif section in ("Args", "Arguments", "Parameters") and stripped:
            if name_indent is None:
                name_indent = indent
            match = _ARG_LINE.match(stripped)
            if match and indent <= name_indent:
                current = match.group(1).lstrip("*")
                args[current] = match.group(3).strip()
            elif current:
                args[current] = f"{args[current]} {stripped}".strip()
    summary = " ".join(" ".join(summary_lines).split())
    return summary, args


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def type_schema(annotation: Any) -> dict:
    """JSON schema of one annotation (see the module docstring for what is supported)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        schema = type_schema(args[0])
        for meta in args[1:]:
            if isinstance(meta, Range):
                if meta.minimum is not None:
                    schema["minimum"] = meta.minimum
                if meta.maximum is not None:
                    schema["maximum"] = meta.maximum
            elif isinstance(meta, str):
                schema.setdefault("description", meta)
        return schema
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            schema = type_schema(members[0])
            if len(members) < len(args):
                schema["nullable"] = True
            return schema
        return {"anyOf": [type_schema(a) for a in args]}
    if origin is Literal:
        kinds = {type(a) for a in args}
        schema: dict[str, Any] = {"enum": list(args)}
        if len(kinds) == 1:
            schema["type"] = _PRIMITIVES[kinds.pop()]
        return schema
    if annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        schema = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = type_schema(args[0])
        return schema
    if origin is dict or annotation is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = type_schema(args[1])
        return schema
    if annotation is Any:
        return {}
    raise TypeError(f"unsupported tool parameter type {annotation!r}")


_PRIMITIVES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def validate_arguments(schema: dict, arguments: dict, tool_name: str = "tool") -> dict:
    """Check ``arguments`` against an object schema made by ``tool_spec``; return them normalised.

    Raises ToolArgumentError listing every problem (unknown names, missing required ones, wrong
    types, values outside the enum or range) so the model can fix them all in one go.
    """
    properties = schema.get("properties", {})
    problems: list[str] = []
    unknown = sorted(set(arguments) - set(properties))
    if unknown:
        problems.append(f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(properties) or 'none'}")
    missing = [name for name in schema.get("required", []) if name not in arguments]
    if missing:
        problems.append(f"missing required argument(s) {', '.join(missing)}")
    normalised: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in properties:
            normalised[name] = _check_value(properties[name], value, name, problems)
    if problems:
        raise ToolArgumentError(f"{tool_name}: " + "; ".join(problems))
    return normalised


def _check_value(schema: dict, value: Any, where: str, problems: list[str]) -> Any:
    original = value
    if value is None and schema.get("nullable"):
        return None
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            trial: list[str] = []
            result = _check_value(option, value, where, trial)
            if not trial:
                return result
        problems.append(f"{where} = {_show(value)} matches none of the allowed types")
        return value
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        problems.append(f"{where} = {_show(value)} is not one of {allowed}")
        return value
    kind = schema.get("type")
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where} = {_show(value)} must be an integer")
            return value
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where} = {_show(value)} must be a number")
            return value
        value = float(value)
        if not math.isfinite(value):  # json.loads accepts NaN/Infinity; NaN slips past every range check
            problems.append(f"{where} = {_show(original)} must be a finite number")
            return value
    elif kind == "boolean" and not isinstance(value, bool):
        problems.append(f"{where} = {_show(value)} must be true or false")
        return value
    elif kind == "string" and not isinstance(value, str):
        problems.append(f"{where} = {_show(value)} must be a string")
        return value
    elif kind == "array":
        if not isinstance(value, list):
            problems.append(f"{where} = {_show(value)} must be a list")
            return value
        item_schema = schema.get("items", {})
        return [_check_value(item_schema, item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    elif kind == "object":
        if not isinstance(value, dict):
            problems.append(f"{where} = {_show(value)} must be an object")
            return value
        value_schema = schema.get("additionalProperties")
        if isinstance(value_schema, dict):
            return {k: _check_value(value_schema, v, f"{where}.{k}", problems) for k, v in value.items()}
        return value
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and value < low:
            problems.append(f"{where} = {_show(original)} is below the minimum {low:g}")
        elif high is not None and value > high:
            problems.append(f"{where} = {_show(original)} is above the maximum {high:g}")
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if _json_safe(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
