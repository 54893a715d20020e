"""The OpenAI-compatible request bodies, and how each becomes ``SamplingParams``.

Every field a body accepts is honoured; an unknown field is refused (``extra="forbid"``), so a
client never believes a setting took effect when it did not. Values are checked by
``SamplingParams`` itself, whose ``ValueError`` names the field (HTTP 400).

Beyond OpenAI's fields, both bodies take the engine's own sampling fields as vLLM does
(``top_k``, ``min_p``, ``repetition_penalty``, ``stop_token_ids``, ``ignore_eos``, and the
generation-control fields ``repeat_check``..., ``regex``, ``grammar``).

Integers are 64-bit, as in OpenAI's own schema: ``SamplingParams`` takes any Python int, but
the sampler and the plugins put these values in int64 tensors, where a larger one would fail a
whole engine step (every request in it) instead of this one request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vibe_sgl_lite.sampling import SamplingParams

MAX_N = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    """``{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class EngineFields(BaseModel):
    """The engine's sampling fields that OpenAI does not have (vLLM's extensions)."""

    model_config = ConfigDict(extra="forbid")
    top_k: Int64 = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    repeat_check: bool = False
    repeat_check_window: Int64 = 1024
    repeat_block_size: Int64 = 64
    repeat_min_blocks: Int64 = 16
    regex: str | None = None
    grammar: str | None = None


class CommonFields(EngineFields):
    model: str
    # Checked here, before anything loops over range(n): n <= 0 would make no choices at all.
    n: int = Field(1, ge=1, le=MAX_N, description=f"completions per prompt, 1..{MAX_N}")
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # recorded nowhere, accepted as OpenAI does
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None

    def sampling_params(self, max_tokens: int, logprobs: int | None, index: int) -> SamplingParams:
        """The ``SamplingParams`` of choice ``index`` (of ``n``); raises ``ValueError``."""
        engine = {name: getattr(self, name) for name in EngineFields.model_fields}
        json_schema: dict[str, Any] | None = None
        if self.response_format is not None and self.response_format.type != "text":
            json_schema = _schema_of(self.response_format)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            # n choices with one seed must still differ, and replay exactly
            seed=None if self.seed is None else self.seed + index,
            stop=self.stop,
            logprobs=logprobs,
            logit_bias=self.logit_bias,  # type: ignore[arg-type]  # keys checked there
            json_schema=json_schema,
            **engine,
        )


def _schema_of(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "object"}
    inner = fmt.json_schema or {}
    schema = inner.get("schema")
    if not isinstance(schema, dict):
        raise ValueError("response_format.json_schema.schema must be a JSON schema object")
    return schema


class CompletionRequest(CommonFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False


class ChatMessage(BaseModel):
    """One message; ``content`` is a string or a list of content parts, joined to a string.

    Many OpenAI clients send ``[{"type": "text", "text": "Hi"}]`` rather than ``"Hi"``. Text
    parts are concatenated in order; any other part (``image_url``, ``input_audio``, ...) is a
    400 naming it, since this server has no model that could read it.
    """

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | None = None  # None in an assistant message that only calls tools
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls (tools.py)
    tool_call_id: str | None = None  # a "tool" message: the call it answers

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content: object) -> object:
        if not isinstance(content, list):
            return content  # a string, or what the ``str`` check refuses
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError(f'part {i} must be an object with a "type", got {part!r}')
            if part["type"] != "text":
                raise ValueError(
                    f"part {i} has type {part['type']!r}; only text parts are supported"
                )
            if not isinstance(part.get("text"), str):
                raise ValueError(f'part {i} must have a string "text"')
            texts.append(part["text"])
        return "".join(texts)

    @model_validator(mode="after")
    def _content_unless_calls(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (but for an assistant's tool_calls)")
        return self


class FunctionSpec(BaseModel):
    """A tool's function: its name, what it does, and its arguments' JSON schema."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    """``{"type": "function", "function": {...}}``, one entry of ``tools``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``: call this function."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(CommonFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True  # accepted; a forced choice makes one call
    chat_template_kwargs: dict[str, Any] | None = None  # the template's variables


class GenerateRequest(BaseModel):
    """The native endpoint: ``generate_outputs(prompts, sampling_params)`` over HTTP."""

    model_config = ConfigDict(extra="forbid")
    prompts: str | list[int] | list[str | list[int]]  # a batch may mix text and token ids
    sampling_params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("sampling_params")
    @classmethod
    def _ints_fit_int64(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The OpenAI bodies' ``Int64`` check for the free-form ``SamplingParams`` fields."""
        for name, value in params.items():
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"{name} must be a 64-bit integer, got {value}")
        return params
