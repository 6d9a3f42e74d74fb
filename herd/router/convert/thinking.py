"""Thinking models: which models think, and their output cap raised for thinking.

On Ollama a thinking model's thinking counts against `num_predict`, so a
client that caps the output (`num_predict`, `max_tokens`,
`max_output_tokens`) can get an empty answer: the whole cap was spent
thinking. When thinking is on (`think` not false) and the request has a
positive cap, the router adds the model's `thinking.budget_tokens` to it (if
`thinking.inflate`, the default) and says so in the `X-Herd-Thinking-Budget`
response header (`requested=50; sent=1074; budget=1024`). If the answer still
comes back empty, the node's `done_reason` is `length` (OpenAI:
`finish_reason: "length"`, Responses: `status: "incomplete"`), never `stop`.

A model thinks when the manifest says so (`models[].thinking`), else when the
node lists the `thinking` capability for it, else when its name is one of the
known thinking families. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from herd.manifest.model import Model, Thinking

HEADER = "X-Herd-Thinking-Budget"

#: Model families that think (matched against the name without its tag).
THINKING_NAMES = (
    "qwen3",
    "qwq",
    "deepseek-r1",
    "deepseek-v3.1",
    "gpt-oss",
    "phi4-reasoning",
    "phi4-mini-reasoning",
    "magistral",
    "exaone-deep",
    "openthinker",
    "cogito",
)
#: Variants of those families that do not think.
NOT_THINKING = ("coder", "embed", "instruct")

DEFAULT = Thinking()


def thinks_by_name(name: str) -> bool:
    """True for a known thinking family (`qwen3:8b`, `deepseek-r1:7b`...)."""
    base = name.rsplit("/", 1)[-1].lower()
    if any(word in base for word in NOT_THINKING):
        return False
    return any(base.startswith(family) for family in THINKING_NAMES)


def thinks(model: Model, capabilities: Iterable[str] | None = None) -> bool:
    """Whether `model` thinks: manifest, then node capabilities, then name."""
    if model.thinking is not None:
        return True
    if capabilities is not None:
        return "thinking" in capabilities
    return thinks_by_name(model.name)


@dataclass(frozen=True)
class Budget:
    """What the router did to one request's output cap."""

    requested: int
    sent: int
    budget: int

    def header(self) -> str:
        return f"requested={self.requested}; sent={self.sent}; budget={self.budget}"


def inflate(
    native: dict[str, Any],
    model: Model,
    capabilities: Callable[[], Iterable[str] | None] = lambda: None,
) -> Budget | None:
    """Raise `native["options"]["num_predict"]` for thinking (in place).

    None when nothing changed: the model does not think, thinking is off,
    there is no positive cap, or the manifest says `inflate: false`.
    `capabilities` (what the node reports) is only asked when it matters.
    """
    options = native.get("options")
    if not isinstance(options, dict) or native.get("think") is False:
        return None
    limit = options.get("num_predict")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return None
    policy = model.thinking or DEFAULT
    if not policy.inflate or not thinks(model, capabilities()):
        return None
    sent = limit + policy.budget_tokens
    native["options"] = {**options, "num_predict": sent}
    return Budget(limit, sent, policy.budget_tokens)
