"""Accepting a turn of the OpenAI-compatible endpoint (openai_api).

It is a turn like any other (chat.services.turns): queued in ONE transaction with
its messages and a hold of its worst case, run by `run_turn` on the worker, completed
by `turn_complete` with one debit (reference = turn id). What differs:

- its session is the caller's API key's own (source `openai`, one per key, made on
  first use), so the turns show in GET turns/{id} and every usage report, marked;
- its messages are the request's (system, user, assistant with tool calls, tool
  results), stored as the turn's own; no session history is read (chat.engine.completion);
- its options (max_tokens, sampling, stop, tools, tool_choice, user) are stored on
  the turn for the worker;
- its hold is one call: its messages and tools counted with the alias's rule
  (chat.llm.counting) plus the output limit, the smaller of the client's max_tokens
  and the alias's max_output_tokens; the call cannot cost more.
"""

from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.attribution import NO_ATTRIBUTION, Attribution
from accounts.models import ApiKey, User
from accounts.rate_limits import api_key_rate_reserve
from billing.limits import SpendLimit, spend_limits_for
from billing.models import ModelPrice
from billing.money import ledger_amount
from billing.pricing import cost_bound
from billing.services import wallet_hold_place
from chat.engine.context import input_budget
from chat.llm import ChatMessage
from chat.llm.counting import count_prompt
from chat.models import ChatSession, Message, Turn
from chat.services.turns import SESSION_TOUCH_RESOLUTION, turn_hand_over_robustly, turns_in_flight_check
from core import rawsql
from core.exceptions import field_error
from core.text import storable


@dataclass
class CompletionRequest:
    """A parsed chat-completion request in the neutral shapes (openai_api parses it)."""

    price: ModelPrice
    messages: list[ChatMessage]
    # Tool definitions in the neutral shape {"name", "description", "parameters"}.
    tools: list[dict[str, Any]] = field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    tool_choice: str | None = None
    tool_name: str = ""
    user: str = ""


def completion_session(
    *, user: User, api_key: ApiKey, source: ChatSession.Source = ChatSession.Source.OPENAI
) -> ChatSession:
    """The session that holds the key's requests of `source` (its completions, or its
    embeddings: chat.services.embeddings), made on first use."""
    found = ChatSession.objects.filter(api_key=api_key, source=source).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return ChatSession.objects.create(
                user=user, api_key=api_key, source=source, membership_id=api_key.membership_id,
                title=f"{ChatSession.Source(source).label} ({api_key.name or api_key.prefix})"[:200],
            )  # fmt: skip
    except IntegrityError:  # a concurrent first request made it
        return ChatSession.objects.get(api_key=api_key, source=source)


def completion_worst_case(*, request: CompletionRequest) -> tuple[int, Decimal, int]:
    """(output limit, the call's worst-case cost, its worst-case tokens: the prompt
    counted with the alias's rule plus the output limit, what a key's tpm counts).
    Raises 400 naming `messages` when the prompt does not fit the alias's input
    budget."""
    price = request.price
    prompt = count_prompt(request.messages, price.counting, request.tools)
    budget = input_budget(price)
    if prompt > budget:
        raise field_error(
            "messages",
            f"{prompt} tokens with the tools (counted as {price.counting}); the input limit of '{price.alias}' "
            f"is {budget}.",
        )
    limit = min(request.max_tokens or price.max_output_tokens, price.max_output_tokens)
    worst = cost_bound(price, input_tokens=prompt, output_tokens=limit)
    return limit, ledger_amount(worst), prompt + limit


def completion_request_storable(request: CompletionRequest) -> CompletionRequest:
    """The request as the database can store it (core.text: a NUL becomes U+FFFD) in
    its messages, tool calls, tool definitions and options; counted and sent as stored."""
    messages = [
        replace(
            message, content=storable(message.content), tool_call_id=storable(message.tool_call_id),
            tool_calls=tuple(
                replace(call, id=storable(call.id), name=storable(call.name), arguments=storable(call.arguments),
                        raw_arguments=storable(call.raw_arguments))
                for call in message.tool_calls
            ),
        )
        for message in request.messages
    ]  # fmt: skip
    return replace(
        request, messages=messages, tools=storable(request.tools), stop=storable(request.stop),
        tool_name=storable(request.tool_name), user=storable(request.user),
    )  # fmt: skip


def completion_turn_create(
    *, user: User, api_key: ApiKey, request: CompletionRequest, attribution: Attribution = NO_ATTRIBUTION,
    hand_over: bool = True,
) -> Turn:  # fmt: skip
    """Accepts the request as a queued turn holding its worst case (402 in `block` mode
    when not covered, 429 past the user's turns in flight); it is handed to the worker
    when it commits (the outbox of chat.services.turns: the sweep sends it again when
    the broker did not take it). With `hand_over=False` the caller hands it over
    (chat.services.turns.turn_hand_over) once it listens to the turn's events, so a
    stream misses none of them; until then it is marked handed over, and the sweep
    sends it after TURN_REDISPATCH_SECONDS should the caller never do it."""
    request = completion_request_storable(request)
    limit, worst_case, tokens = completion_worst_case(request=request)
    options = {
        "max_tokens": limit, "temperature": request.temperature, "top_p": request.top_p, "stop": request.stop,
        "tools": request.tools, "tool_choice": request.tool_choice, "tool_name": request.tool_name,
        "user": request.user,
    }  # fmt: skip
    spend_limits = spend_limits_for(user=user, api_key=api_key, end_user=attribution.end_user)
    # Taken outside the transaction (a cache, never a lock), given back on refusal.
    reservation = api_key_rate_reserve(api_key=api_key, tokens=tokens)
    try:
        session = completion_session(user=user, api_key=api_key)
        return _completion_turn_write(
            user=user, session=session, request=request, options=options, worst_case=worst_case,
            spend_limits=spend_limits, attribution=attribution, hand_over=hand_over,
        )  # fmt: skip
    except BaseException:
        reservation.release()
        raise


def _completion_turn_write(
    *, user: User, session: ChatSession, request: CompletionRequest, options: dict, worst_case: Decimal,
    spend_limits: list[SpendLimit], attribution: Attribution, hand_over: bool,
) -> Turn:  # fmt: skip
    with transaction.atomic():
        turn = Turn(
            session=session, user=user, model_alias=request.price.alias, price=request.price,
            end_user=attribution.end_user, membership_id=attribution.membership_id, purpose=attribution.purpose,
            completion_options=options, dispatched_at=timezone.now(),  # cleared if the send fails
        )  # fmt: skip
        rawsql.insert([turn])
        rawsql.insert(
            [
                Message(
                    session=session,
                    turn=turn,
                    role=message.role,
                    content=message.content,
                    tool_calls=[call.as_dict() for call in message.tool_calls] or None,
                    tool_call_id=message.tool_call_id,
                )  # fmt: skip
                for message in request.messages
            ]
        )
        # Refuses (402) in block mode, or past a key budget or the account cap; the
        # turn and its messages roll back with it.
        wallet_hold_place(
            user=user, amount=worst_case, reference=str(turn.pk), spend_limits=spend_limits, reference_is_new=True
        )
        turns_in_flight_check(user=user, membership_id=attribution.membership_id)  # under the wallet's row lock, as turn_create counts
        if session.updated_at is None or timezone.now() - session.updated_at > SESSION_TOUCH_RESOLUTION:
            ChatSession.objects.filter(pk=session.pk).update(updated_at=timezone.now())
        if hand_over:
            transaction.on_commit(partial(turn_hand_over_robustly, turn_id=str(turn.pk)))
    return turn
