"""The life of a turn.

A turn moves queued -> running -> completed | failed, each move a compare-and-set:

- `turn_create` (the request): validates, then in ONE transaction writes the Turn
  (queued), the user Message and a hold of the turn's worst-case cost (reference =
  turn id; 402 in `block` mode when it is not covered); `run_turn` is sent when
  that commits.
- `turn_run` (the worker): queued|running -> running (a redelivered task takes the
  turn over), then chat.engine runs the session's mode (single with the tool loop,
  round table, orchestrator; summaries) outside any transaction, then
- `turn_complete`: ONE transaction that locks the turn and does nothing unless it
  is still unfinished: assistant messages, LLM calls, tool calls, a single debit of
  the calls that reported usage (reference = turn id, settling the hold) or, with
  nothing to charge, the hold's release; the usage rollup; a new session summary;
  the turn's outcome.

So a task run twice, or redelivered after its worker died mid-turn, completes the
turn once and charges it once.
"""

import logging
from datetime import timedelta
from decimal import Decimal
from functools import partial
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from billing.models import ModelPrice, Wallet
from billing.money import is_low_balance
from billing.selectors import model_price_for_alias
from billing.services import wallet_debit, wallet_hold_place, wallet_hold_release
from chat import _sql, dispatch, streaming
from chat.engine import turn_outcome
from chat.engine.hold import turn_hold_amount
from chat.engine.metering import TurnOutcome
from chat.models import CONTENT_MAX_CHARS, ChatSession, LLMCall, Message, ToolCall, Turn
from chat.selectors import FINISHED, UNFINISHED, turn_for_idempotency_key, turn_status
from core.exceptions import StateConflict, TooManyRequests, field_error
from reporting.services import usage_rollup_add

logger = logging.getLogger(__name__)

# A session's updated_at (its place in "most recently active") moves at most this
# often, which keeps an UPDATE off most turn requests.
SESSION_TOUCH_RESOLUTION = timedelta(seconds=60)


# --- accepting a turn --------------------------------------------------------------


def turn_worst_case_cost(*, session: ChatSession, price: ModelPrice, content: str) -> Decimal:
    """The most the turn can cost, held when it is accepted: see
    chat.engine.turn_hold_amount for the bound of each mode. Raises 400 naming
    `content` when the new message alone does not fit the model's input budget."""
    return turn_hold_amount(session=session, price=price, content=content)


def _check_replay(turn: Turn, *, session: ChatSession, content: str) -> Turn:
    """A repeated Idempotency-Key must come with the same request."""
    first = Message.objects.filter(turn=turn, role=Message.Role.USER).order_by("id").first()
    if turn.session_id != session.pk or (first is not None and first.content != content):
        raise StateConflict("This Idempotency-Key was already used for a different request.")
    return turn


def turn_create(
    *,
    user: User,
    session: ChatSession,
    content: str,
    model_alias: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[Turn, bool]:
    """Accepts a turn: (turn, created). With an Idempotency-Key already used by this
    user, returns that turn and creates nothing."""
    if idempotency_key and (existing := turn_for_idempotency_key(user=user, key=idempotency_key)) is not None:
        return _check_replay(existing, session=session, content=content), False
    if not content.strip():
        raise field_error("content", "This field may not be blank.")
    if len(content) > CONTENT_MAX_CHARS:
        raise field_error("content", f"Ensure this field has no more than {CONTENT_MAX_CHARS} characters.")
    alias = model_alias or session.model_alias
    if not alias:
        raise field_error("model_alias", "Name a model alias: this session has no default.")
    price = model_price_for_alias(alias=alias)
    if price is None:
        raise field_error("model_alias", f"'{alias}' is not an active model alias.")
    worst_case = turn_worst_case_cost(session=session, price=price, content=content)

    try:
        with transaction.atomic():
            turn = Turn.objects.create(
                session=session, user=user, model_alias=price.alias, price=price, idempotency_key=idempotency_key
            )
            Message.objects.create(session=session, turn=turn, role=Message.Role.USER, content=content)
            # Refuses (402) in block mode; the turn and message roll back with it.
            wallet_hold_place(user=user, amount=worst_case, reference=str(turn.pk))
            # Counted under the wallet's row lock, which the hold took: concurrent
            # requests of one user are counted one after the other.
            _check_turns_in_flight(user=user)
            if session.updated_at is None or timezone.now() - session.updated_at > SESSION_TOUCH_RESOLUTION:
                ChatSession.objects.filter(pk=session.pk).update(updated_at=timezone.now())
            transaction.on_commit(partial(dispatch.run_turn_send, turn_id=str(turn.pk)), robust=True)
    except IntegrityError:
        # A concurrent request with the same key committed first.
        if idempotency_key and (existing := turn_for_idempotency_key(user=user, key=idempotency_key)) is not None:
            return _check_replay(existing, session=session, content=content), False
        raise
    return turn, True


def _check_turns_in_flight(*, user: User) -> None:
    """Fair use: at most MAX_CONCURRENT_TURNS_PER_USER turns queued or running (this
    one included), so no user fills the workers alone."""
    limit = settings.MAX_CONCURRENT_TURNS_PER_USER
    if Turn.objects.filter(user=user, status__in=UNFINISHED).count() > limit:
        raise TooManyRequests(
            f"At most {limit} turns queued or running per user; wait for one to finish.", retry_after=2
        )


def turns_requeue_lost(*, older_than: timedelta = timedelta(minutes=10), limit: int = 500) -> int:
    """Sends `run_turn` again for turns never started long after they were accepted:
    their task was lost (the broker was unreachable at commit, and the send on commit
    only logged it). Without this they would keep their hold for ever.

    A turn merely waiting in a long queue gets a second message too, and that is not
    harmless: turn_start takes over a RUNNING turn (so a redelivered task can finish
    what a dead worker left), so the second message can start the turn again while
    the first run is still live: readers get a `reset`, both runs call the providers
    (the provider bills twice), and turn_complete's lock writes and charges only the
    first outcome to finish.
    Leases on the claim (a later issue) end this."""
    cutoff = timezone.now() - older_than
    turn_ids = list(
        Turn.objects.filter(status=Turn.Status.QUEUED, attempts=0, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    for turn_id in turn_ids:
        dispatch.run_turn_send(turn_id=str(turn_id))
    if turn_ids:
        logger.warning("re-sent run_turn for %d turns whose task was lost", len(turn_ids))
    return len(turn_ids)


# --- running a turn ------------------------------------------------------------------


def turn_start(*, turn_id: UUID | str) -> Turn | None:
    """queued|running -> running. None when the turn is finished (or gone): a
    duplicate delivery then does nothing. A running turn is taken over: its worker
    died (redelivery), and whatever it had not committed is redone."""
    if not _sql.turn_start(turn_id=turn_id):
        return None
    return Turn.objects.select_related("session", "user", "price").get(pk=turn_id)


def turn_run(*, turn_id: UUID | str) -> Turn | None:
    """The worker's whole job for one turn; safe to run any number of times."""
    turn = turn_start(turn_id=turn_id)
    if turn is None:
        return None
    if turn.attempts > 1:
        streaming.publish(turn.pk, "reset", {"attempt": turn.attempts})
    price = turn.price or model_price_for_alias(alias=turn.model_alias)
    if price is None:
        return turn_complete(turn=turn, outcome=TurnOutcome(error=f"Model alias '{turn.model_alias}' has no price."))
    return turn_complete(turn=turn, outcome=turn_outcome(turn=turn, price=price))


def turn_fail(*, turn_id: UUID | str, error: str) -> Turn | None:
    """Fails an unfinished turn without charging it (releases its hold)."""
    turn = Turn.objects.select_related("user").filter(pk=turn_id).first()
    if turn is None:
        return None
    return turn_complete(turn=turn, outcome=TurnOutcome(error=error))


def _aliases(llm_calls: list[LLMCall]) -> list[str]:
    """Every model alias that took part (a round table's speakers), in call order."""
    return list(dict.fromkeys(call.model_alias for call in llm_calls))


def turn_complete(*, turn: Turn, outcome: TurnOutcome) -> Turn:
    """Writes the outcome in ONE transaction, once: a turn that is already finished
    is returned as it is and nothing is written or charged (a duplicate run)."""
    reference = str(turn.pk)
    with transaction.atomic():
        # Lock order everywhere: turn, then wallet (billing.services), then rollups.
        if turn_status(turn_id=turn.pk, lock=True) in (*FINISHED, None):
            return Turn.objects.get(pk=turn.pk)  # finished: as it is (gone: DoesNotExist)
        locked = turn  # unfinished and locked: nothing else writes it until this commits
        for message in outcome.messages:
            message.turn, message.session_id = locked, locked.session_id
        Message.objects.bulk_create(outcome.messages)
        for call in outcome.llm_calls:
            call.turn, call.user_id = locked, locked.user_id
        LLMCall.objects.bulk_create(outcome.llm_calls)
        for tool_call in outcome.tool_calls:
            tool_call.turn = locked
        ToolCall.objects.bulk_create(outcome.tool_calls)

        charge = sum((call.cost for call in outcome.llm_calls if call.status == LLMCall.Status.OK), Decimal("0"))
        if charge > 0:
            row = wallet_debit(
                user=turn.user, amount=charge, reference=reference, release_hold=reference,
                reason=f"Turn {reference} ({', '.join(_aliases(outcome.llm_calls) or [locked.model_alias])})",
            )  # fmt: skip
            balance = row.balance_after
        else:
            wallet_hold_release(user=turn.user, reference=reference)
            balance = Wallet.objects.get(user_id=locked.user_id).balance
        usage_rollup_add(llm_calls=outcome.llm_calls)
        if outcome.summary is not None:
            text, through = outcome.summary
            # A concurrent turn may have folded more already: never move the summary back.
            ChatSession.objects.filter(pk=locked.session_id).filter(
                Q(summary_through_message_id__isnull=True) | Q(summary_through_message_id__lt=through)
            ).update(summary=text, summary_through_message_id=through)

        locked.status = Turn.Status.FAILED if outcome.error else Turn.Status.COMPLETED
        locked.error = outcome.error
        locked.credits_charged = charge
        locked.balance_after = balance
        locked.low_balance = is_low_balance(balance)
        locked.finished_at = timezone.now()
        locked.save(update_fields=["status", "error", "credits_charged", "balance_after", "low_balance", "finished_at"])
        if streaming.enabled():
            prior = outcome.prior_messages
            if prior is None:
                prior = list(Message.objects.filter(turn=locked).exclude(pk__in=[m.pk for m in outcome.messages]))
            done = partial(
                streaming.publish_done, turn=locked, messages=[*prior, *outcome.messages],
                llm_calls=outcome.llm_calls, tool_calls=outcome.tool_calls,
            )  # fmt: skip
            transaction.on_commit(done)
    return locked
