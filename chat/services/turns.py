"""The life of a turn.

A turn moves queued -> running -> completed | failed | cancelled, each move a
compare-and-set:

- `turn_create` (the request): validates, then in ONE transaction writes the Turn
  (queued, marked handed over), the user Message and a hold of the turn's worst-case
  cost (reference = turn id; 402 when it is not covered: in `block` mode, or past
  BILLING_OVERDRAFT_LIMIT in `warn` mode); `run_turn`
  is sent when that commits. A send that fails (the broker is down) clears the mark,
  and the beat sweep (`turns_sweep`, every TURN_SWEEP_SECONDS) hands the turn over
  once the broker is back: the database, not the broker, is the record of what must
  run.
- `turn_run` (the worker; without a broker, a thread of the web process:
  chat.dispatch): claims the turn with a lease (queued -> running, or a
  running turn whose lease ran out because its worker died), which chat.leases
  renews while it works, so no second worker runs a live turn whatever the broker
  delivers; then chat.engine runs the session's mode outside any transaction, then
- `turn_complete`: ONE transaction that locks the turn and does nothing unless it
  is still unfinished and, for a worker's run, still leased to that run: assistant
  messages, LLM calls, tool calls, a single debit of the calls that returned usage
  (reference = turn id, settling the hold) or, with nothing to charge, the hold's
  release; the usage rollup; a new session summary; the turn's outcome. When the
  database fails there, the outcome is kept (chat.outcome_store) and the write is
  retried with it: no provider call that returned is made again.
- `turn_cancel` (the owner's Stop): a queued turn ends at once; a running one is
  told to stop at its next streamed piece, and what was said is kept and charged.

So a task run twice, or redelivered after its worker died mid-turn, completes the
turn once and charges it once.
"""

import logging
import time
from datetime import timedelta
from decimal import Decimal
from functools import partial
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.attribution import NO_ATTRIBUTION, Attribution
from accounts.models import ApiKey, User
from accounts.rate_limits import api_key_rate_reserve
from billing.limits import spend_limits_for
from billing.models import ModelPrice, Wallet
from billing.money import is_low_balance
from billing.selectors import model_price_for_alias
from billing.services import wallet_debit, wallet_hold_place, wallet_hold_release
from chat import _sql, dispatch, leases, streaming
from chat.engine import turn_outcome
from chat.engine.hold import turn_hold_amount, turn_token_estimate
from chat.engine.metering import TurnOutcome
from chat.metrics import TURNS
from chat.models import CONTENT_MAX_CHARS, ChatSession, LLMCall, Message, ToolCall, Turn
from chat.outcome_store import outcome_drop, outcome_keep, outcome_kept
from chat.selectors import FINISHED, turn_for_idempotency_key, turn_status, turns_in_flight
from core import rawsql
from core.db import DATABASE_DOWN, db_release
from core.exceptions import StateConflict, TooManyRequests, field_error
from core.text import storable
from reporting.services import usage_rollup_add

logger = logging.getLogger(__name__)

# Why an embeddings turn taken over by a worker fails (chat.services.embeddings; not
# imported: that module builds on this one).
EMBEDDINGS_INTERRUPTED = "The embeddings request was interrupted (its web process stopped); nothing was charged."

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
    api_key: ApiKey | None = None,
    attribution: Attribution = NO_ATTRIBUTION,
    hand_over: bool = True,
) -> tuple[Turn, bool]:
    """Accepts a turn: (turn, created). With an Idempotency-Key already used by this
    user, returns that turn and creates nothing. `api_key` (the request's) brings its
    limits: rpm/tpm (429) before the transaction, its budget and the account's cap
    (402) held with the wallet's hold inside it. With `hand_over=False` the caller
    hands a created turn to the worker (turn_hand_over) once it listens to its events
    (if it never does, the sweep sends the turn TURN_REDISPATCH_SECONDS later)."""
    if idempotency_key and (existing := turn_for_idempotency_key(user=user, key=idempotency_key)) is not None:
        return _check_replay(existing, session=session, content=content), False
    if session.source != ChatSession.Source.CHAT:
        raise StateConflict(
            "This session holds an API key's requests to the OpenAI-compatible endpoint (/v1); "
            "post chat turns to a chat session."
        )
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
    if price.kind != ModelPrice.Kind.CHAT:
        raise field_error("model_alias", f"'{alias}' is an {price.kind} model; a turn needs a chat model.")
    worst_case = turn_worst_case_cost(session=session, price=price, content=content)
    tokens = turn_token_estimate(session=session, price=price, content=content) if api_key and api_key.tpm else 0
    spend_limits = spend_limits_for(user=user, api_key=api_key, end_user=attribution.end_user)

    # Taken outside the transaction (a cache, never a lock), given back on refusal.
    reservation = api_key_rate_reserve(api_key=api_key, tokens=tokens)
    try:
        with transaction.atomic():
            turn = Turn(
                session=session, user=user, model_alias=price.alias, price=price, idempotency_key=idempotency_key,
                end_user=attribution.end_user, membership_id=attribution.membership_id, purpose=attribution.purpose,
                dispatched_at=timezone.now(),  # cleared below if the send fails
            )  # fmt: skip
            rawsql.insert([turn])
            # Kept on the turn: the answer to a just-accepted turn needs no read.
            turn.accepted_messages = [Message(session=session, turn=turn, role=Message.Role.USER, content=content)]
            rawsql.insert(turn.accepted_messages)
            # Refuses (402) in block mode, or past a key budget or the account cap;
            # the turn and message roll back with it.
            wallet_hold_place(
                user=user, amount=worst_case, reference=str(turn.pk), spend_limits=spend_limits, reference_is_new=True
            )
            # Counted under the wallet's row lock, which the hold took: concurrent
            # requests of one user are counted one after the other.
            turns_in_flight_check(user=user, membership_id=attribution.membership_id)
            if session.updated_at is None or timezone.now() - session.updated_at > SESSION_TOUCH_RESOLUTION:
                ChatSession.objects.filter(pk=session.pk).update(updated_at=timezone.now())
            if hand_over:
                transaction.on_commit(partial(turn_hand_over_robustly, turn_id=str(turn.pk)))
    except IntegrityError:
        reservation.release()
        # A concurrent request with the same key committed first.
        if idempotency_key and (existing := turn_for_idempotency_key(user=user, key=idempotency_key)) is not None:
            return _check_replay(existing, session=session, content=content), False
        raise
    except BaseException:
        reservation.release()
        raise
    return turn, True


def turns_in_flight_check(*, user: User, membership_id: int | None = None) -> None:
    """Fair use: at most MAX_CONCURRENT_TURNS_PER_USER turns queued or running (this
    one included), so no user fills the workers alone. An organization's members
    each have their own allowance (`membership_id`: the turn's member)."""
    limit = settings.MAX_CONCURRENT_TURNS_PER_USER
    if turns_in_flight(user=user, membership_id=membership_id) > limit:
        raise TooManyRequests(
            f"At most {limit} turns queued or running per user; wait for one to finish.", retry_after=2
        )


def turn_hand_over(*, turn_id: str) -> bool:
    """Sends `run_turn` for a turn marked handed over; when the broker does not take
    it, clears the mark so the sweep sends it again. Never raises: the turn is safe
    in the database either way."""
    if dispatch.run_turn_send(turn_id=turn_id):
        return True
    Turn.objects.filter(pk=turn_id, status=Turn.Status.QUEUED).update(dispatched_at=None)
    return False


def turn_hand_over_robustly(*, turn_id: str) -> None:
    """turn_hand_over as a robust on-commit hook would run it: a failure is logged,
    and the turn waits in the database for the sweep. The accepting transaction's
    on-commit hook is this (not `on_commit(partial(turn_hand_over), robust=True)`:
    Django's robust hook logs the callback's __qualname__, which a partial lacks, so
    its own log line raised and a committed turn answered 500)."""
    try:
        turn_hand_over(turn_id=turn_id)
    except Exception:
        logger.exception("turn %s: the hand-over failed; the sweep sends it", turn_id)


def turns_sweep(*, limit: int = 500) -> int:
    """The beat's sweep (every TURN_SWEEP_SECONDS): hands the broker every turn that
    must run and has no live message or worker. Returns how many were handed over.

    - queued and never handed over (the send failed: the broker was down), once the
      accepting request had its chance to send (a couple of seconds);
    - queued and handed over TURN_REDISPATCH_SECONDS ago or more (the message was
      lost with a Redis restart, or with a worker that died before claiming it);
    - running with its lease run out (its worker died), not handed over since.
    A duplicate message is harmless: the claim takes a turn only when it is queued
    or its lease ran out. A turn taken over TURN_MAX_ATTEMPTS times is failed
    instead (with what an earlier run kept, if any)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TURN_REDISPATCH_SECONDS)
    queued = Q(status=Turn.Status.QUEUED) & (
        Q(dispatched_at__isnull=True, created_at__lt=now - timedelta(seconds=2)) | Q(dispatched_at__lt=stale)
    )
    expired = Q(status=Turn.Status.RUNNING) & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
    due = Turn.objects.filter(queued | expired).order_by("created_at")
    sent = []
    for turn_id, status, attempts, dispatched_at, lease_expires_at in due.values_list(
        "pk", "status", "attempts", "dispatched_at", "lease_expires_at"
    )[:limit]:
        if status == Turn.Status.RUNNING:
            if attempts >= settings.TURN_MAX_ATTEMPTS:
                logger.error("turn %s was started %d times and never finished; failing it", turn_id, attempts)
                turn_fail(turn_id=turn_id, error=f"The turn could not be run in {attempts} attempts.")
                continue
            if dispatched_at is not None and lease_expires_at is not None and stale < dispatched_at > lease_expires_at:
                continue  # handed over since its lease ran out: a worker will take it
        if dispatch.run_turn_send(turn_id=str(turn_id)):
            sent.append(turn_id)
    Turn.objects.filter(pk__in=sent).update(dispatched_at=timezone.now())
    if sent:
        logger.warning("handed %d turns to the broker again (lost message, broker outage or dead worker)", len(sent))
    return len(sent)


# --- running a turn ------------------------------------------------------------------


def turn_start(*, turn_id: UUID | str, lease: leases.Lease | None = None) -> Turn | None:
    """queued -> running, or a running turn whose lease ran out taken over (its worker
    died; whatever it had not committed is redone). None when the turn is finished,
    gone, or running under a live lease: a duplicate delivery then does nothing."""
    lease = lease or leases.Lease(turn_id=str(turn_id))
    if not _sql.turn_start(turn_id=turn_id, lease_token=lease.token, lease_expires_at=leases.lease_expiry()):
        return None
    return _sql.turn_for_run(turn_id=turn_id)


def turn_run(*, turn_id: UUID | str) -> Turn | None:
    """The worker's whole job for one turn; safe to run any number of times."""
    lease = leases.Lease(turn_id=str(turn_id))
    turn = turn_start(turn_id=turn_id, lease=lease)
    if turn is None:
        return None
    leases.lease_hold(lease)
    try:
        return _complete_durably(turn=turn, outcome=_turn_produce(turn), lease=lease)
    finally:
        leases.lease_drop(lease)


def _turn_produce(turn: Turn) -> TurnOutcome:
    """What this run writes: an earlier run's kept outcome (the database failed at
    its completion), nothing for a turn cancelled before it ran, else a new run."""
    embeddings = turn.session.source == ChatSession.Source.EMBEDDINGS
    if turn.attempts > 1:
        if (kept := outcome_kept(turn.pk)) is not None:
            return kept
        if not embeddings:
            streaming.publish(turn.pk, "reset", {"attempt": turn.attempts})
    if embeddings:
        # Its web process died mid-call (its lease lapsed): the call is not made again
        # here, and nothing is charged (chat.services.embeddings).
        return TurnOutcome(error=EMBEDDINGS_INTERRUPTED)
    if turn.cancel_requested_at is not None:
        return TurnOutcome(cancelled=True)
    price = turn.price or model_price_for_alias(alias=turn.model_alias)
    if price is None:
        return TurnOutcome(error=f"Model alias '{turn.model_alias}' has no price.")
    return turn_outcome(turn=turn, price=price)


def _complete_durably(*, turn: Turn, outcome: TurnOutcome, lease: leases.Lease) -> Turn | None:
    """turn_complete, retried with the outcome in hand while the database is away
    (about TURN_COMPLETE_RETRY_SECONDS, less than a lease). The outcome is kept in
    Redis at the first failure: if the database stays down longer, this run gives
    up, its lease runs out, and the run that takes the turn over writes it. An
    outcome the database refuses (not away: a value it cannot store) is written
    again as its charge alone (outcome_charge_only): a finished call is charged."""
    kept = turn.attempts > 1  # a takeover may be writing a kept outcome: drop it after
    delay, waited, refused = 0.5, 0.0, False
    while True:
        try:
            done = turn_complete(turn=turn, outcome=outcome, lease_token=lease.token)
        except DATABASE_DOWN as exc:
            kept = kept or outcome_keep(turn.pk, outcome)
            db_release()
            if waited >= settings.TURN_COMPLETE_RETRY_SECONDS:
                logger.error("turn %s: the database is still failing (%s); the outcome waits in Redis for a takeover",
                             turn.pk, exc.__class__.__name__)  # fmt: skip
                return None
            logger.warning("turn %s: completion failed (%s); retrying in %.1f s", turn.pk, exc.__class__.__name__, delay)
            time.sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 8.0)
            continue
        except DatabaseError as exc:
            if refused:
                raise  # even the charge alone: the turn's lease runs out and it is taken over
            # Refused, not away: the same write would fail again. Write the charge alone.
            logger.exception("turn %s: the database refused its outcome; writing its charge alone", turn.pk)
            outcome = outcome_charge_only(outcome, why=f"The answer could not be stored ({exc.__class__.__name__}).")
            refused = True
            continue
        if kept:
            outcome_drop(turn.pk)
        return done


def turn_fail(*, turn_id: UUID | str, error: str) -> Turn | None:
    """Fails an unfinished turn: charges what an earlier run kept (calls that
    returned usage), else nothing (releases its hold)."""
    turn = Turn.objects.select_related("user").filter(pk=turn_id).first()
    if turn is None:
        return None
    outcome = outcome_kept(turn.pk) or TurnOutcome()
    outcome.error = outcome.error or error
    done = turn_complete(turn=turn, outcome=outcome)
    outcome_drop(turn.pk)
    return done


# --- the owner's Stop -------------------------------------------------------------------


def turn_cancel(*, turn: Turn) -> Turn:
    """Stops a turn: a queued one is cancelled at once (its hold released); a running
    one is asked to stop at its next streamed piece (its worker keeps and charges
    what was said, and releases the rest of the hold). 422 naming the status for a
    finished turn; asking twice is harmless."""
    with transaction.atomic():
        status = turn_status(turn_id=turn.pk, lock=True)
        if status == Turn.Status.QUEUED:
            return turn_complete(turn=turn, outcome=TurnOutcome(cancelled=True))
        if status != Turn.Status.RUNNING:
            raise StateConflict(f"This turn is already {status}: only a queued or running turn can be cancelled.")
        Turn.objects.filter(pk=turn.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=timezone.now())
        transaction.on_commit(partial(leases.cancel_wake, turn.pk))
    return Turn.objects.get(pk=turn.pk)


def _aliases(llm_calls: list[LLMCall]) -> list[str]:
    """Every model alias that took part (a round table's speakers), in call order."""
    return list(dict.fromkeys(call.model_alias for call in llm_calls))


def turn_complete(*, turn: Turn, outcome: TurnOutcome, lease_token: UUID | None = None) -> Turn:
    """Writes the outcome in ONE transaction, once: a turn that is already finished,
    or (with `lease_token`, a worker's run) leased to another run since, is returned
    as it is and nothing is written or charged (a duplicate or superseded run)."""
    reference = str(turn.pk)
    outcome_make_storable(outcome)
    with transaction.atomic():
        # Lock order everywhere: turn, then wallet (billing.services), then rollups.
        status, holder = _sql.turn_lock(turn_id=turn.pk)
        if status in (*FINISHED, None) or (lease_token is not None and holder != lease_token):
            return Turn.objects.get(pk=turn.pk)  # as it is (gone: DoesNotExist)
        locked = turn  # unfinished and locked: nothing else writes it until this commits
        for message in outcome.messages:
            message.turn, message.session_id = locked, locked.session_id
        rawsql.insert(outcome.messages)
        for call in outcome.llm_calls:
            call.turn, call.user_id = locked, locked.user_id
        rawsql.insert(outcome.llm_calls)
        for tool_call in outcome.tool_calls:
            tool_call.turn = locked
        rawsql.insert(outcome.tool_calls)

        charge = sum((call.cost for call in outcome.llm_calls if call.billed), Decimal("0"))
        if charge > 0:
            row = wallet_debit(
                user=turn.user, amount=charge, reference=reference, release_hold=reference, reference_is_new=True,
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

        locked.status = _final_status(outcome)
        transaction.on_commit(TURNS.labels(status=locked.status).inc)  # once: a turn finishes in one commit
        locked.error = "" if outcome.cancelled else outcome.error
        locked.credits_charged = charge
        locked.balance_after = balance
        locked.low_balance = is_low_balance(balance)
        locked.finished_at = timezone.now()
        rawsql.update(locked, ["status", "error", "credits_charged", "balance_after", "low_balance", "finished_at"])
        if streaming.live():
            prior = outcome.prior_messages
            if prior is None:
                prior = list(Message.objects.filter(turn=locked).exclude(pk__in=[m.pk for m in outcome.messages]))
            done = partial(
                streaming.publish_done, turn=locked, messages=[*prior, *outcome.messages],
                llm_calls=outcome.llm_calls, tool_calls=outcome.tool_calls,
            )  # fmt: skip
            transaction.on_commit(done)
    return locked


# Text columns of what a run produced (core.text: PostgreSQL cannot store a NUL).
_STORED_TEXT = {
    Message: ("content", "tool_calls", "tool_call_id"),
    LLMCall: ("error", "finish_reason"),
    ToolCall: ("tool", "arguments", "result_excerpt"),
}


def outcome_make_storable(outcome: TurnOutcome) -> None:
    """Makes every text of `outcome` storable (a NUL becomes U+FFFD), in place."""
    for row in (*outcome.messages, *outcome.llm_calls, *outcome.tool_calls):
        for name in _STORED_TEXT[type(row)]:
            setattr(row, name, storable(getattr(row, name)))
    outcome.error = storable(outcome.error)
    if outcome.summary is not None:
        outcome.summary = (storable(outcome.summary[0]), outcome.summary[1])


def outcome_charge_only(outcome: TurnOutcome, *, why: str) -> TurnOutcome:
    """What is written when the database refused a finished run's outcome for a
    reason other than being away: its LLM calls, charged, and nothing of what they
    said (the turn fails with `why`). Calls that returned are never given away."""
    calls = []
    for call in outcome.llm_calls:
        call.pk, call.id = None, None  # its text was made storable already (turn_complete)
        call._state.adding = True  # noqa: SLF001  a row of the failed transaction, never stored
        calls.append(call)
    return TurnOutcome(llm_calls=calls, error=why, prior_messages=outcome.prior_messages)


def _final_status(outcome: TurnOutcome) -> str:
    if outcome.cancelled:
        return Turn.Status.CANCELLED
    return Turn.Status.FAILED if outcome.error else Turn.Status.COMPLETED
