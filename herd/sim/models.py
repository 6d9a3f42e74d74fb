"""The models a `herd sim` node pretends to serve: metadata and deterministic output.

Pure functions, no I/O: the same request always gives the same words, JSON,
tool calls and vectors (seeded from the model name, the prompt and the seed), so
tests can compare answers across nodes. Capabilities follow the model's name:
`*embed*`/`bge`/`minilm` are embedding models, `llava`/`*vision*`/`gemma3` see
images, `qwen3`/`deepseek-r1`/`gpt-oss`/`*think*` think; all others chat with tools.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EMBED_DIM = 384
_WORDS = (
    "the herd grazes quietly while a patient shepherd counts every sheep under "
    "a pale morning sky and rivers carry stories from distant hills toward the "
    "old stone village where lanterns glow above narrow streets full of bread "
    "music careful hands warm wool bright answers small questions gentle rain"
).split()
_FAMILIES = (
    ("llama", "llama"),
    ("qwen", "qwen2"),
    ("gemma", "gemma3"),
    ("mistral", "llama"),
    ("phi", "phi3"),
    ("nomic", "nomic-bert"),
    ("bge", "bert"),
    ("minilm", "bert"),
    ("llava", "llama"),
    ("deepseek", "qwen2"),
    ("gpt-oss", "gptoss"),
)
#: Fixed so /api/tags is stable across restarts (real nodes show manifest mtimes).
MODIFIED_AT = "2026-11-01T09:30:00.000000000Z"


def normalize(name: str) -> str:
    """`Llama3.2` → `llama3.2:latest`, as Ollama matches names."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


@dataclass(frozen=True)
class SimModel:
    """One simulated model and what it can do (derived from its name)."""

    name: str
    #: For a model in the node's store (herd.sim.store): the sha256 of its
    #: manifest, its size and the manifest's mtime; None for a name-only model.
    stored_digest: str | None = None
    stored_size: int | None = None
    stored_at: float | None = None

    @property
    def base(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def embedding(self) -> bool:
        return any(k in self.base for k in ("embed", "bge", "minilm"))

    @property
    def vision(self) -> bool:
        return any(k in self.base for k in ("llava", "vision", "gemma3"))

    @property
    def thinking(self) -> bool:
        keys = ("qwen3", "deepseek-r1", "gpt-oss", "think")
        return any(k in self.base for k in keys)

    @property
    def capabilities(self) -> list[str]:
        if self.embedding:
            return ["embedding"]
        caps = ["completion", "tools"]
        caps += ["vision"] if self.vision else []
        caps += ["thinking"] if self.thinking else []
        return caps

    @property
    def family(self) -> str:
        return next((f for k, f in _FAMILIES if k in self.base), "llama")

    @property
    def parameter_size(self) -> str:
        match = re.search(r"[:\-](\d+(?:\.\d+)?)b\b", self.base)
        if match:
            return f"{match.group(1).upper()}B"
        return "137M" if self.embedding else "7B"

    @property
    def quantization(self) -> str:
        return "F16" if self.embedding else "Q4_K_M"

    @property
    def size(self) -> int:
        if self.stored_size is not None:
            return self.stored_size
        size = self.parameter_size
        billions = float(size[:-1]) / (1000 if size.endswith("M") else 1)
        bytes_per = 2.0 if self.embedding else 0.6
        return int(billions * 1e9 * bytes_per) + 1_000_003

    @property
    def digest(self) -> str:
        if self.stored_digest is not None:
            return self.stored_digest
        return hashlib.sha256(f"herd-sim/{self.name}".encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def tag(self) -> dict[str, Any]:
        """The model's /api/tags entry."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": MODIFIED_AT
            if self.stored_at is None
            else rfc3339(self.stored_at),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
            "capabilities": self.capabilities,
        }

    def show(self) -> dict[str, Any]:
        """The /api/show reply (with `model_info`, which clients require)."""
        arch = self.family
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.file_type": 1 if self.embedding else 15,
            "general.parameter_count": int(self.size / 0.6),
            "general.quantization_version": 2,
            f"{arch}.context_length": 8192 if self.embedding else 131072,
            f"{arch}.embedding_length": EMBED_DIM if self.embedding else 3072,
        }
        if self.embedding:
            info[f"{arch}.pooling_type"] = 1
        return {
            "license": "Simulated model for herd tests; no weights.",
            "modelfile": f"# Modelfile generated by herd sim\nFROM {self.name}\n",
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}",
            "details": self.details(),
            "model_info": info,
            "capabilities": self.capabilities,
            "modified_at": MODIFIED_AT,
        }


def rfc3339(epoch: float) -> str:
    """Go's RFC 3339 with nanoseconds, as Ollama prints times."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{stamp}.{int(epoch % 1 * 1e9):09d}Z"


# ---------------------------------------------------------------- output


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8)
    return random.Random(int.from_bytes(digest.digest(), "big"))


def words(seed: Sequence[Any], count: int) -> list[str]:
    """`count` deterministic tokens (" word"), the first capitalised."""
    rng = _rng(*seed)
    out = [" " + rng.choice(_WORDS) for _ in range(count)]
    if out:
        out[0] = out[0][1:].capitalize()
    return out


def reply_length(seed: Sequence[Any]) -> int:
    """How many tokens the model 'wants' to say: 8..40, fixed per request."""
    return _rng("len", *seed).randint(8, 40)


def split_tokens(text: str, size: int = 4) -> list[str]:
    """Cut `text` into stream tokens of a few characters (for JSON output)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def from_schema(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A placeholder value of the schema's type (objects get every property)."""
    if not isinstance(schema, Mapping) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return from_schema(schema[key][0], rng, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        names = list(props) or list(schema.get("required") or [])
        return {n: from_schema(props.get(n, {}), rng, depth + 1) for n in names}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [from_schema(schema.get("items", {}), rng, depth + 1)] * count
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return rng.choice(_WORDS)


def json_reply(fmt: Any, seed: Sequence[Any]) -> str:
    """The text a model in JSON mode returns: an object, valid for a schema `fmt`."""
    rng = _rng("json", *seed)
    if isinstance(fmt, Mapping):
        value = from_schema(fmt, rng)
    else:
        value = {"answer": "".join(words(seed, 6)).strip()}
    return json.dumps(value)


def tool_call(
    tools: Sequence[Mapping[str, Any]], prompt: str, seed: Sequence[Any]
) -> dict[str, Any] | None:
    """A call of the first tool the prompt mentions, else None.

    A tool is "mentioned" when a word of 4+ letters from its name (split on `_`,
    `-`, camelCase) appears in the prompt: "What's the weather in Paris?" calls
    `get_weather`. String arguments take the prompt's last capitalised word.
    """
    said = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    for tool in tools:
        fn = tool.get("function") or {}
        name = str(fn.get("name", ""))
        parts = re.split(r"[_\-\s]+|(?<=[a-z])(?=[A-Z])", name)
        if not any(len(p) >= 4 and p.lower() in said for p in parts):
            continue
        caps = re.findall(r"\b[A-Z][a-zA-Z]+", prompt)
        params = fn.get("parameters") or {}
        rng = _rng("tool", *seed)
        args = {}
        for key, prop in (params.get("properties") or {}).items():
            if key not in (params.get("required") or [key]):
                continue
            value = from_schema(prop, rng)
            if isinstance(value, str) and caps and not prop.get("enum"):
                value = caps[-1]
            args[key] = value
        call_id = "call_" + hashlib.sha256(json.dumps(seed).encode()).hexdigest()[:8]
        return {
            "id": call_id,
            "function": {"index": 0, "name": name, "arguments": args},
        }
    return None


def embedding(text: str, model: str, dimensions: int | None = None) -> list[float]:
    """A deterministic L2-normalised vector (re-normalised after truncation)."""
    rng = _rng("embed", model, text)
    vector = [rng.gauss(0.0, 1.0) for _ in range(EMBED_DIM)][: dimensions or EMBED_DIM]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 8) for v in vector]


def count_tokens(text: str) -> int:
    """A crude token count (words and punctuation), enough for usage figures."""
    return len(re.findall(r"\w+|[^\w\s]", text))


#: How many tokens a thinking model thinks before it answers.
THINKING_TOKENS = 6


@dataclass(frozen=True)
class Reply:
    """What the model says to one request, before it is streamed."""

    thinking: tuple[str, ...]
    content: tuple[str, ...]
    tool_calls: tuple[dict[str, Any], ...]
    done_reason: str
    prompt_tokens: int

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.content) + 12 * len(self.tool_calls)


def compose(
    model: SimModel,
    prompt: str,
    *,
    options: Mapping[str, Any],
    think: Any = None,
    fmt: Any = None,
    tools: Sequence[Mapping[str, Any]] = (),
    tool_turn: bool = False,
    tokens: int | None = None,
    salt: int = 0,
) -> Reply:
    """The deterministic reply to `prompt` (the conversation's text).

    `tool_turn` is true when the last message is the user's (a tool may be
    called; not with a `format`, which constrains the whole answer); `tokens`
    fixes the reply length (else 8..40 from the prompt); `options.num_predict`
    cuts thinking plus answer (done_reason "length"), `options.stop` too.
    """
    seed = (salt, model.name, prompt, options.get("seed"))
    prompt_tokens = count_tokens(prompt) + 8
    thinking = tuple(words(("think", *seed), THINKING_TOKENS)) if think else ()
    limit = options.get("num_predict")
    if isinstance(limit, int) and 0 <= limit <= len(thinking):
        # Thinking counts against num_predict, as on Ollama: a small cap is
        # spent before the answer starts, which is then empty.
        return Reply(thinking[:limit], (), (), "length", prompt_tokens)
    # A `format` constrains the whole answer, so it wins over tool calls.
    call = tool_call(tools, prompt, seed) if tools and tool_turn and not fmt else None
    if call:
        return Reply(thinking, (), (call,), "stop", prompt_tokens)
    if fmt:
        content = split_tokens(json_reply(fmt, seed))
    else:
        content = words(seed, tokens or reply_length(seed))
    reason = "stop"
    if isinstance(limit, int) and 0 <= limit - len(thinking) < len(content):
        content, reason = content[: limit - len(thinking)], "length"
    stops = options.get("stop") or ()
    if isinstance(stops, str):
        stops = [stops]
    text = ""
    for i, token in enumerate(content):
        text += token
        hit = next((s for s in stops if s and s in text), None)
        if hit:
            # Cut the stop sequence (and what follows) out of the last token.
            keep = token[: max(0, len(token) - (len(text) - text.index(hit)))]
            content, reason = [*content[:i], keep], "stop"
            break
    return Reply(thinking, tuple(content), (), reason, prompt_tokens)
