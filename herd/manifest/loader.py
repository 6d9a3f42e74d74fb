"""Load a manifest: bounded YAML with lines → JSON Schema → semantics → `Fleet`.

Every problem is reported, not just the first, each as `FILE:LINE: path: message`
(the schema's best match first). Nothing here raises anything but `ManifestError`
on bad input: an empty, binary, huge or alias-bombed file is a problem like any
other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, relevance

from herd import hosts
from herd.errors import ManifestError
from herd.manifest.model import Fleet, build_fleet
from herd.manifest.schema import validator
from herd.manifest.semantics import check

#: Manifests are hand-written; anything this large is a mistake or an attack.
MAX_BYTES = 4 * 1024 * 1024
#: Nodes after expanding YAML aliases; stops "billion laughs" before it expands.
MAX_NODES = 200_000

Path_ = tuple[str | int, ...]
#: libyaml's parser when PyYAML was built with it (10x faster); same safe constructor.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest, located by line and field path."""

    line: int
    path: str
    message: str

    def render(self, source: str) -> str:
        message = self.message.replace("\r", "\\r").replace("\n", "\\n")
        return f"{source}:{self.line}: {self.path}: {message}"


def format_path(path: Path_) -> str:
    """`("router", "clients", 0, "name")` → `router.clients[0].name`."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:  # odd keys stay one whitespace-free, unambiguous token
            out += "[" + json.dumps(str(part)).replace(" ", "\\u0020") + "]"
    return out or "(top)"


class LineMap:
    """Line of every key and value in the document, by field path."""

    def __init__(self) -> None:
        self.lines: dict[Path_, int] = {}

    def line(self, path: Path_) -> int:
        """Line of `path`, or of its nearest ancestor that has one."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)


def _walk(
    node: yaml.Node, path: Path_, lines: LineMap, problems: list[Problem]
) -> None:
    """Record lines; report duplicate keys (PyYAML silently keeps the last one)."""
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = (*path, key)
            if key in seen:
                problems.append(
                    Problem(
                        key_node.start_mark.line + 1,
                        format_path(child),
                        "duplicate key (YAML would silently keep only the last one)",
                    )
                )
            seen.add(key)
            lines.lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, problems)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Node count once aliases are expanded, computed without expanding them."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a cycle counts once; the constructor rejects cycles anyway
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(
            _expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value
        )
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, memo) for item in node.value)
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def parse_yaml(data: bytes, source: str) -> tuple[Any, LineMap]:
    """Bounded, safe YAML parse keeping line numbers; raises ManifestError."""

    def fail(line: int, message: str) -> ManifestError:
        return ManifestError(source, [Problem(line, "(top)", message)])

    if len(data) > MAX_BYTES:
        raise fail(1, _too_big(len(data)))
    if b"\x00" in data:
        raise fail(1, "file is binary (contains NUL bytes), not YAML")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as ex:
        line = data[: ex.start].count(b"\n") + 1
        raise fail(line, f"not valid UTF-8 at byte {ex.start}") from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise fail(1, "manifest is empty")
        if _expanded_size(root, {}) > MAX_NODES:
            raise fail(
                root.start_mark.line + 1,
                f"document expands to more than {MAX_NODES:,} nodes (YAML alias bomb?)",
            )
        lines = LineMap()
        problems: list[Problem] = []
        _walk(root, (), lines, problems)
        if problems:
            raise ManifestError(source, problems)
        # Construct from the node tree already composed: the text is parsed once.
        doc = loader.construct_document(root)
    except yaml.YAMLError as ex:
        raise fail(_yaml_line(ex), f"invalid YAML: {_yaml_message(ex)}") from None
    except (RecursionError, TypeError) as ex:
        raise fail(1, f"invalid YAML: {_yaml_message(ex)}") from None
    finally:
        loader.dispose()
    return doc, lines


def _too_big(size: int) -> str:
    return (
        f"file is {size:,} bytes; manifests are limited to "
        f"{MAX_BYTES // (1024 * 1024)} MiB"
    )


def _yaml_line(ex: yaml.YAMLError) -> int:
    mark = getattr(ex, "problem_mark", None) or getattr(ex, "context_mark", None)
    return mark.line + 1 if mark else 1


def _yaml_message(ex: BaseException) -> str:
    if isinstance(ex, yaml.MarkedYAMLError):
        parts = [p for p in (ex.context, ex.problem) if p]
        return ", ".join(parts) or str(ex).splitlines()[0]
    return str(ex).splitlines()[0] if str(ex) else type(ex).__name__


def _schema_problems(doc: Any, lines: LineMap) -> Iterator[Problem]:
    errors = list(validator().iter_errors(doc))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    rest = sorted(
        (e for e in errors if e is not best),
        key=lambda e: (lines.line(tuple(e.absolute_path)), -relevance(e)[0]),
    )
    for error in [best, *rest]:
        yield _schema_problem(error, lines)


def _schema_problem(error: ValidationError, lines: LineMap) -> Problem:
    path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)
        if extra:
            child = (*path, extra[0])
            hint = ", ".join(sorted(known)) or "none"
            return Problem(
                lines.line(child),
                format_path(child),
                f"unknown key {extra[0]!r} (allowed here: {hint})",
            )
    return Problem(lines.line(path), format_path(path), _schema_message(error))


def _schema_message(error: ValidationError) -> str:
    """Short, field-oriented wording for the commonest validators."""
    v, inst = error.validator, error.instance
    if v == "pattern":
        expected = error.schema.get("description") or f"pattern {error.validator_value}"
        return f"{inst!r} is not in the expected form ({expected})"
    if v == "required":
        return error.message.replace("is a required property", "is required")
    if v == "type":
        return f"expected {error.validator_value}, got {type(inst).__name__} {inst!r}"
    if v == "const":
        return f"must be {error.validator_value!r}, got {inst!r}"
    if v == "oneOf" and error.schema.get("description"):
        return f"{inst!r} is not valid: {error.schema['description']}"
    return error.message


def load_bytes(
    data: bytes, source: str = "<manifest>", base_dir: str | None = None
) -> Fleet:
    """Parse, validate and build a manifest; raise ManifestError listing every problem.

    `base_dir` is where relative paths in the manifest resolve (the manifest
    file's directory); None leaves them as written.
    """
    doc, lines = parse_yaml(data, source)
    problems = list(_schema_problems(doc, lines))
    if problems:
        raise ManifestError(source, problems)
    problems = [
        Problem(lines.line(path), format_path(path), message)
        for path, message in check(doc, hosts.lookup)
    ]
    if problems:
        raise ManifestError(source, problems)
    doc = _resolve_paths(doc, base_dir)
    tokens, problems = read_tokens(doc, lines)
    if problems:
        raise ManifestError(source, problems)
    return build_fleet(doc, tokens)


def load_file(path: str | Path) -> Fleet:
    """Load a manifest file; relative paths in it resolve against its directory."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ManifestError(str(path), [Problem(1, "(top)", _too_big(size))])
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as ex:
        raise ManifestError(
            str(path), [Problem(1, "(top)", f"cannot read: {ex.strerror or ex}")]
        ) from None
    return load_bytes(data, str(path), str(path.resolve().parent))


#: Manifest fields that hold file paths.
_PATH_FIELDS = (
    ("bundles", "trusted_signers"),
    ("bundles", "store"),
    ("discovery", "node_keys"),
)


#: A bearer token file is one short line; anything larger is the wrong file.
TOKEN_MAX_BYTES = 4096


def read_tokens(
    doc: dict[str, Any], lines: LineMap
) -> tuple[dict[str, str], list[Problem]]:
    """Each node's bearer token from its `token_file`, by node name.

    A token file must be private (no group or other permission bits), hold
    one non-empty line of printable ASCII, and be small. Problems name the
    file but never show its content.
    """
    tokens: dict[str, str] = {}
    problems: list[Problem] = []
    for i, node in enumerate(doc.get("nodes") or ()):
        name = node.get("token_file")
        if not name:
            continue
        path = ("nodes", i, "token_file")

        def fail(message: str, path: tuple[Any, ...] = path) -> None:
            problems.append(Problem(lines.line(path), format_path(path), message))

        try:
            info = Path(name).stat()
            if info.st_mode & 0o077:
                fail(
                    f"{name} is readable or writable by group or others "
                    f"(mode {info.st_mode & 0o777:o}); run: chmod 600 {name}"
                )
                continue
            with open(name, "rb") as fh:
                data = fh.read(TOKEN_MAX_BYTES + 1)
        except OSError as ex:
            fail(f"cannot read {name}: {ex.strerror or ex}")
            continue
        token = data.strip()
        if len(data) > TOKEN_MAX_BYTES:
            fail(f"{name} is larger than {TOKEN_MAX_BYTES} bytes: not a token file")
        elif not token:
            fail(f"{name} is empty")
        elif not all(0x21 <= b < 0x7F for b in token):
            fail(f"{name} must hold one token of printable ASCII without spaces")
        else:
            tokens[node["name"]] = token.decode("ascii")
    return tokens, problems


def _resolve_paths(doc: dict[str, Any], base_dir: str | None) -> dict[str, Any]:
    if base_dir is None:
        return doc
    for node in doc.get("nodes") or ():
        value = node.get("token_file")
        if value and not Path(value).is_absolute():
            node["token_file"] = str(Path(base_dir) / value)
    for section, key in _PATH_FIELDS:
        value = (doc.get(section) or {}).get(key)
        if value and not Path(value).is_absolute():
            doc[section][key] = str(Path(base_dir) / value)
    return doc
