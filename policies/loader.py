"""Policy loading: YAML text or a file to a validated ``Policy``, and reloading on change.

Owns: parsing YAML, turning every validation failure into one line that names the rule,
the field's path, the reason and the line (``PolicyError``), and ``PolicyFile``, which
re-reads a file when it changes. No threads or timers: the caller's event loop calls
``PolicyFile.check()`` periodically and on RELOAD.
Must not touch: sockets, ``router/``, the running policy (the caller swaps it in).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from policies.match import compile_policy
from policies.model import DUPLICATE_RULE_NAME, Policy

_Loc = tuple[int | str, ...]
_Stamp = tuple[int, int, int, int]
_SHOWN_INPUT = (str, int, float, bool)


class PolicyError(Exception):
    """A policy cannot be used. The message lists every problem, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid policy {source}:\n{lines}")


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """Validate policy YAML. Empty text (or only comments) gives the default ``Policy``."""
    root, data = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(source, ["(top level): the file must be a mapping, e.g. 'rules: [...]'"])
    problems = _duplicate_keys(root, (), data) + _duplicate_rule_names(data, root)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems += [
            _describe(error, data, root)
            for error in exc.errors()
            if error["type"] != DUPLICATE_RULE_NAME  # reported above, with every repeat
        ]
    else:
        if not problems:
            compile_policy(policy)
            return policy
    problems.sort(key=lambda problem: problem[0])
    raise PolicyError(source, [message for _, message in problems])


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate the policy file at ``path``."""
    return parse_policy(_read(Path(path)), str(path))


class PolicyFile:
    """A policy file and the policy last loaded from it.

    ``check()`` re-reads the file when its modification time, size or inode changed (or
    always, with ``force=True``, for RELOAD) and returns the new policy, or ``None`` when
    nothing changed. An unreadable or invalid file raises ``PolicyError`` and ``current``
    stays; that version is not reported again until the file changes or a forced check.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: _Stamp | None = _stamp(self.path)
        self._text = _read(self.path)
        self.current = parse_policy(self._text, str(self.path))

    def check(self, force: bool = False) -> Policy | None:
        try:
            stamp: _Stamp | None = _stamp(self.path)
        except PolicyError:
            stamp = None
        if stamp == self._stamp and not force:
            return None
        self._stamp = stamp
        if stamp is None:
            raise PolicyError(str(self.path), ["(file): cannot be read; keeping the policy in use"])
        text = _read(self.path)
        if text == self._text:  # touched, or restored to what is already running
            return None
        policy = parse_policy(text, str(self.path))
        self._text, self.current = text, policy
        return policy


def _stamp(path: Path) -> _Stamp:
    try:
        status = path.stat()
    except OSError as exc:
        raise PolicyError(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
    return (status.st_mtime_ns, status.st_size, status.st_ino, status.st_ctime_ns)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), [f"(file): not UTF-8 text: {exc.reason}"]) from None


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        raise PolicyError(source, [f"(yaml): {reason or 'not valid YAML'}{where}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"(yaml): {exc}"]) from None
    finally:
        loader.dispose()


# Problems are (line, message) pairs, sorted by line before they are reported.
_Problem = tuple[int, str]


def _duplicate_keys(node: yaml.Node | None, loc: _Loc, data: Any) -> list[_Problem]:
    """Keys repeated in one mapping, which PyYAML would otherwise silently overwrite."""
    problems: list[_Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                path = _path((*loc, name), data)
                problems.append(_at(key, f"{path}: duplicate key; only one is allowed"))
            seen.add(name)
            problems += _duplicate_keys(value, (*loc, name), data)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*loc, index), data)
    return problems


def _duplicate_rule_names(data: dict[Any, Any], root: yaml.Node | None) -> list[_Problem]:
    rules = data.get("rules")
    if not isinstance(rules, list):
        return []
    problems: list[_Problem] = []
    first: dict[str, int] = {}
    for index, rule in enumerate(rules):
        name = rule.get("name") if isinstance(rule, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            loc: _Loc = ("rules", index, "name")
            message = f"duplicate rule name, first used by rules[{first[name]}]"
            problems.append(_at(_node_at(root, loc), f"{_path(loc, data)}: {message}"))
        else:
            first[name] = index
    return problems


def _describe(error: ErrorDetails, data: Any, root: yaml.Node | None) -> _Problem:
    loc = tuple(error["loc"])
    kind = error["type"]
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = "unknown key" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
    elif kind != "missing" and isinstance(error.get("input"), _SHOWN_INPUT):
        message = f"{message} (got {error['input']!r})"
    return _at(_node_at(root, loc), f"{_path(loc, data)}: {message}")


def _path(loc: _Loc, data: Any) -> str:
    """``('rules', 2, 'match', 'tag', 0)`` -> ``rules[2] (name 'reports').match.tag[0]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            data = data[part] if isinstance(data, list) and part < len(data) else None
            name = data.get("name") if isinstance(data, dict) else None
            if isinstance(name, str):
                text += f" (name {name!r})"
        else:
            text += f".{part}" if text else str(part)
            data = data.get(part) if isinstance(data, dict) else None
    return text or "(top level)"


def _node_at(root: yaml.Node | None, loc: _Loc) -> yaml.Node | None:
    """The deepest YAML node along ``loc``, for its line number."""
    node = root
    for depth, part in enumerate(loc, 1):
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            # The key's own node for the last part: an unknown key is reported where it is.
            pick = 0 if depth == len(loc) else 1
            child = next((pair[pick] for pair in node.value if pair[0].value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node = child
    return node


def _at(node: yaml.Node | None, message: str) -> _Problem:
    if node is None:
        return (0, message)
    line = node.start_mark.line + 1
    return (line, f"{message} (line {line})")


def _allowed_keys(loc: _Loc) -> list[str]:
    model: type[BaseModel] | None = Policy
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = None if field is None else _model_in(field.annotation)
    return [] if model is None else list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
