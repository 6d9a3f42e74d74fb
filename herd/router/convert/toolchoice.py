"""Forced tool choice and single tool calls, emulated on Ollama (which has neither).

Ollama's /api/chat takes `tools` but no `tool_choice` and no
`parallel_tool_calls`. The router emulates them:

- `tool_choice: {"type": "function", ...}` (one named function) or `"required"`
  (any of the offered functions): only those tools are sent, and `format` is a
  JSON schema that only admits `{"name": <one of them>, "arguments": {...}}`
  (the tool's own parameter schema). The node's grammar-constrained sampling
  then cannot answer anything but such a call.
- The reply is checked: a native tool call of an allowed function is kept; a
  content that is such a JSON object becomes the tool call; anything else is
  an error (`NotACall`), never passed on as if it were the call. A reply cut by
  the output cap keeps finish_reason `length` (the client sees why).
- `parallel_tool_calls: false`: at most one call is returned (the first).

Pure functions on plain dicts; no I/O.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from herd.errors import UpstreamError


class NotACall(UpstreamError):
    """The node's reply is not the tool call `tool_choice` demanded."""

    code = "tool_choice_not_honoured"


@dataclass(frozen=True)
class ToolPlan:
    """What the client demanded of tool calls, and how it is enforced."""

    #: Names the reply must call (empty: the model may answer in text).
    forced: tuple[str, ...] = ()
    #: At most one call in the reply (`parallel_tool_calls: false`, or forced).
    single: bool = False

    @property
    def active(self) -> bool:
        return bool(self.forced) or self.single


NO_PLAN = ToolPlan()


def call_schema(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A JSON schema admitting exactly one call of one of `tools` (native shape)."""
    options = []
    for tool in tools:
        fn = tool["function"]
        params = fn.get("parameters")
        if not isinstance(params, Mapping) or not params:
            params = {"type": "object"}
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [fn["name"]]},
                    "arguments": dict(params),
                },
                "required": ["name", "arguments"],
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def constrain(native: dict[str, Any], plan: ToolPlan) -> None:
    """Offer only the forced tools and set the schema that forces a call."""
    if not plan.forced:
        return
    tools = [
        t for t in native.get("tools") or () if t["function"]["name"] in plan.forced
    ]
    native["tools"] = tools
    native["format"] = call_schema(tools)


def settle(
    message: Mapping[str, Any], done_reason: str | None, plan: ToolPlan
) -> dict[str, Any]:
    """The reply's message with `plan` enforced (see the module docstring).

    Raises NotACall when a forced call is missing and the reply was not cut
    short by the output cap.
    """
    out = dict(message)
    calls = list(message.get("tool_calls") or ())
    if plan.forced:
        calls = [
            c for c in calls if (c.get("function") or {}).get("name") in plan.forced
        ]
        if not calls:
            call = _call_in_text(str(message.get("content") or ""), plan.forced)
            if call is not None:
                calls = [call]
        if calls:
            out["content"] = ""
        elif done_reason != "length":
            names = " or ".join(repr(n) for n in plan.forced)
            raise NotACall(
                f"the model did not call {names} as tool_choice requires; "
                "it answered in text instead"
            )
    if plan.single:
        calls = calls[:1]
    if calls:
        out["tool_calls"] = calls
    else:
        out.pop("tool_calls", None)
    return out


def _call_in_text(text: str, names: tuple[str, ...]) -> dict[str, Any] | None:
    """`{"name": N, "arguments": {...}}` in `text` (N allowed) as a native call."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if not isinstance(args, dict):
        return None
    return {
        "id": "call_" + secrets.token_hex(4),
        "function": {"index": 0, "name": obj["name"], "arguments": args},
    }
