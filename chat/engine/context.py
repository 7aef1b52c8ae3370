"""What a model sees for a turn: the system prompt, the session's rolling summary,
then the most recent messages that fit the alias's input budget, oldest dropped
first, and the turn's own messages last (always kept).

The input budget is the alias's `context_tokens` minus its `max_output_tokens`, so
prompt plus reply fit the model's window. Tokens are counted with the price's rule
(chat.llm.counting), the rule its holds use: the context never holds more than the
hold reserved, whatever the text.

History is the messages of *completed* turns created before this turn's first
message: a failed turn's question without its answer is left out, and a reply
finished after this turn was asked is not part of what it answers.
"""

from dataclasses import dataclass, field, replace

from django.db.models import Case, IntegerField, Value, When

from accounts.models import User
from billing.models import ModelPrice
from chat.llm import ChatMessage, ToolCallRequest
from chat.llm.counting import count_message, count_prompt
from chat.models import ChatSession, Message, Turn, UploadedFile
from chat.selectors import HISTORY_SCAN, files_for_user, history_completed, turn_messages, user_has_files


@dataclass
class TurnContext:
    messages: list[ChatMessage]
    input_tokens: int
    # Older messages left out because they did not fit the budget.
    dropped: int = 0
    history_ids: list[int] = field(default_factory=list)
    # The turn's own stored messages (its user message), as read for this context.
    own_rows: list[Message] = field(default_factory=list)


def input_budget(price: ModelPrice) -> int:
    budget = price.context_tokens - price.max_output_tokens
    # A misconfigured price (output >= window) still leaves room for a prompt.
    return budget if budget > 0 else max(price.context_tokens // 2, 1)


def head_messages(*, session: ChatSession, system_prompt: str | None = None) -> list[ChatMessage]:
    prompt = session.system_prompt if system_prompt is None else system_prompt
    head = [ChatMessage(role="system", content=prompt)] if prompt else []
    if session.summary:
        head.append(ChatMessage(role="system", content=f"Summary of the conversation so far:\n{session.summary}"))
    return head


def _chat_message(role: str, content: str, tool_calls: list | None, tool_call_id: str) -> ChatMessage:
    calls = tuple(ToolCallRequest.from_dict(item) for item in tool_calls) if tool_calls else ()
    return ChatMessage(role=role, content=content, tool_calls=calls, tool_call_id=tool_call_id)


def _with_tool_names(messages: list[ChatMessage]) -> list[ChatMessage]:
    """A tool result gets the name of the tool from the assistant message that asked for it."""
    names: dict[str, str] = {}
    named = []
    for message in messages:
        names.update({call.id: call.name for call in message.tool_calls})
        if message.role == "tool" and message.tool_call_id in names:
            message = replace(message, name=names[message.tool_call_id])
        named.append(message)
    return named


def to_chat_messages(rows: list[Message]) -> list[ChatMessage]:
    """Stored messages in the providers' neutral shape."""
    return _with_tool_names([_chat_message(r.role, r.content, r.tool_calls, r.tool_call_id) for r in rows])


# What the context reads of each earlier message: plain values, not model instances,
# and only what a prompt needs (a long session means up to HISTORY_SCAN rows per
# turn; converting timestamps alone cost as much as the rest, and the turn's UUID,
# which no prompt needs, 10% of the 200-row read, timed alone).
HISTORY_FIELDS = ("id", "role", "content", "tool_calls", "tool_call_id")


@dataclass
class ContextRows:
    """What context_build reads: the turn's own stored messages, oldest first, and
    the newest messages of completed turns before them (after the session's
    summary), newest first."""

    own: list[Message]
    history: list[dict]


def context_rows(*, turn: Turn) -> ContextRows:
    own = turn_messages(turn=turn)
    # Only completed turns: a failed turn's question without its answer stays out. (The
    # hold counts every message: a turn that finishes before this one runs joins it.)
    history = history_completed(
        session=turn.session, before_message_id=own[0].id if own else None, names=HISTORY_FIELDS, scan=HISTORY_SCAN
    )
    return ContextRows(own=own, history=history)


def context_build(
    *,
    turn: Turn,
    price: ModelPrice,
    system_prompt: str | None = None,
    extra: list[ChatMessage] | None = None,
    reserved_tokens: int = 0,
    rows: ContextRows | None = None,
) -> TurnContext:
    """The prompt for the next call of `turn`. `extra` are messages produced earlier
    in this turn and not yet stored (a tool loop, earlier round-table replies);
    `reserved_tokens` is budget taken by something sent besides the messages (tool
    definitions, counted with the price's rule); `rows` is `context_rows(turn=turn)`
    when the caller already read it (a run reads it once for all its calls)."""
    session = turn.session
    if rows is None:
        rows = context_rows(turn=turn)
    own_rows, newest_first = rows.own, rows.history
    own = to_chat_messages(own_rows) + list(extra or ())
    head = head_messages(session=session, system_prompt=system_prompt)
    rule = price.counting
    used = count_prompt([*head, *own], rule) + reserved_tokens
    budget = input_budget(price)

    kept: list[tuple[int, ChatMessage, int]] = []
    for row in newest_first:
        message = _chat_message(row["role"], row["content"], row["tool_calls"], row["tool_call_id"])
        cost = count_message(message, rule)
        if used + cost > budget:
            break
        kept.append((row["id"], message, cost))
        used += cost
    kept.reverse()
    # A tool result whose assistant tool call was cut off would be refused by the
    # providers: drop such orphans from the old end.
    while kept and kept[0][1].role == Message.Role.TOOL:
        used -= kept.pop(0)[2]
    return TurnContext(
        messages=head + _with_tool_names([message for _, message, _ in kept]) + own,
        input_tokens=used - reserved_tokens,
        dropped=len(newest_first) - len(kept),
        history_ids=[row_id for row_id, _, _ in kept],
        own_rows=own_rows,
    )


def files_prompt_note(
    *, user: User, session: ChatSession | None = None, limit: int = 20, membership_id: int | None = None
) -> str:
    """A short list of the user's files for the system prompt, so the model knows which
    ids `file_read` accepts. Files attached to `session` come first. `membership_id`:
    a turn of an organization member's (their own files only)."""
    if not user_has_files(user_id=user.pk, membership_id=membership_id):
        return ""
    files = files_for_user(user=user, membership_id=membership_id)
    if session is not None:  # one query: the session's files first, then the newest others
        here = Case(When(session=session, then=Value(0)), default=Value(1), output_field=IntegerField())
        files = files.order_by(here, *UploadedFile._meta.ordering)
    files = list(files[:limit])
    if not files:
        return ""
    lines = [f'- id {f.pk}: "{f.name}" ({f.content_type}, {f.size} bytes)' for f in files]
    return "Files the user uploaded (read them with the file_read tool):\n" + "\n".join(lines)
