"""The shapes every tool shares: what a tool is, and what running one gives back."""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator

from accounts.models import User


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model (`content`) and into the ToolCall row.

    A tool that cannot do what the model asked (unknown file, search down, bad
    arguments) answers `status="error"` with a message the model can act on; it
    never raises into the turn."""

    status: Literal["ok", "error"]
    content: str
    latency_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def success(cls, content: str) -> "ToolResult":
        return cls(status="ok", content=content)

    @classmethod
    def error(cls, content: str) -> "ToolResult":
        return cls(status="error", content=content)


ToolRun = Callable[..., ToolResult]  # run(*, user: User, arguments: dict) -> ToolResult


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    # JSON Schema of the arguments object: OpenAI `parameters`, Anthropic `input_schema`.
    parameters: dict[str, Any]
    run: ToolRun
    available: Callable[[], bool] = lambda: True
    # Reads the user's own data (their files): run also gets the turn's organization
    # member, whose data alone it may read in an organization's account.
    reads_own_data: bool = False
    # Compiled once, with the registry (F62: nothing about a tool is rebuilt per turn).
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        Draft202012Validator.check_schema(self.parameters)
        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))

    def definition(self) -> dict[str, Any]:
        # A copy: a caller adapting it for a provider must not change the registry.
        return {"name": self.name, "description": self.description, "parameters": copy.deepcopy(self.parameters)}

    def __call__(self, *, user: User, arguments: dict[str, Any], membership_id: int | None = None) -> ToolResult:
        if self.reads_own_data:
            return self.run(user=user, arguments=arguments, membership_id=membership_id)
        return self.run(user=user, arguments=arguments)
