"""An embeddings request's turn (POST /v1/embeddings).

Each request is a turn of the key's own `embeddings` session (one per key, made on
first use), so GET turns/{id}, the usage reports (source `embeddings`), end users
and purposes work as for any turn. Unlike a chat turn it runs where it was
accepted, in the web process, and never on a worker:

- `embedding_turn_create`: counted with the alias's rule (chat.engine.embedding),
  the key's rpm/tpm reserved, then in ONE transaction the turn, already `running`
  under a lease of this process (chat.leases renews it while the call lasts), a
  short message saying what was asked ("Embeddings: 3 inputs, 120 tokens counted.":
  no input text and no vector is stored) and the hold of the count at the input
  price, with the key's budget, the account's cap and the end user's budget
  (billing.limits), as a completion's;
- the call (chat.engine.embedding: on this thread, or on the event loop);
- `embedding_turn_finish`: turn_complete with the call's LLMCall rows, lease-checked:
  one debit (reference = the turn id) of the provider's reported tokens at the
  input price, or the hold released when nothing answered; the usage rollup with it.

A web process that dies mid-call stops renewing the lease; once it lapses the sweep
hands the turn to `turn_run`, which fails an embeddings turn (its hold released)
instead of running it (chat.services.turns._turn_produce), and the lease check keeps
a late finish of the dead run from writing. So a request is charged at most once,
and exactly once when its provider answered and its process lived to record it (or
kept the outcome in Redis for the takeover when the database was away).
"""

import logging
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from accounts.attribution import NO_ATTRIBUTION, Attribution
from accounts.models import ApiKey, User
from accounts.rate_limits import api_key_rate_reserve
from billing.limits import spend_limits_for
from billing.models import ModelPrice
from billing.services import wallet_hold_place
from chat import leases
from chat.engine.embedding import EmbeddingCount, EmbeddingRequest, embedding_count, embedding_routes
from chat.engine.metering import TurnOutcome, attempts_error
from chat.llm.base import EmbeddingResult
from chat.models import ChatSession, LLMCall, Message, Turn
from chat.outcome_store import outcome_keep
from chat.services.completions import completion_session
from chat.services.turns import SESSION_TOUCH_RESOLUTION, turn_complete, turns_in_flight_check
from core import rawsql
from core.db import DATABASE_DOWN
from core.exceptions import field_error
from routing.selectors import Route, routes_for

logger = logging.getLogger(__name__)

def embedding_price_check(price: ModelPrice) -> None:
    """400 naming `model` for an alias that serves no embeddings."""
    if price.kind != ModelPrice.Kind.EMBEDDING:
        raise field_error(
            "model", f"'{price.alias}' is a {price.kind} model; embeddings need an alias of kind embedding."
        )
    if price.provider == ModelPrice.Provider.ANTHROPIC:
        raise field_error("model", f"'{price.alias}' is served by Anthropic, which has no embeddings API.")


def embedding_routes_for(price: ModelPrice) -> list[Route]:
    """The deployments that can embed for `price`: 400 naming `model` when its
    deployments are all Anthropic's."""
    routes = routes_for(price)
    usable = embedding_routes(routes)
    if routes and not usable:
        raise field_error("model", f"'{price.alias}' is served by Anthropic only, which has no embeddings API.")
    return usable


def embedding_turn_create(
    *, user: User, api_key: ApiKey, request: EmbeddingRequest, attribution: Attribution = NO_ATTRIBUTION
) -> tuple[Turn, EmbeddingCount, leases.Lease]:
    """Accepts the request: (its turn, running under the returned lease; its count).
    400 naming `model` or `input`, 429 past rpm/tpm or the turns in flight, 402 (429 on
    /v1) when the hold is refused; nothing is written for a refused request."""
    embedding_price_check(request.price)
    count, refused = embedding_count(request)
    if refused:
        raise field_error("input", refused)
    spend_limits = spend_limits_for(user=user, api_key=api_key, end_user=attribution.end_user)
    reservation = api_key_rate_reserve(api_key=api_key, tokens=count.tokens)
    try:
        session = completion_session(user=user, api_key=api_key, source=ChatSession.Source.EMBEDDINGS)
        now = timezone.now()
        turn = Turn(
            session=session, user=user, model_alias=request.price.alias, price=request.price,
            end_user=attribution.end_user, membership_id=attribution.membership_id, purpose=attribution.purpose, status=Turn.Status.RUNNING, attempts=1,
            started_at=now, completion_options={"inputs": len(request.inputs), "dimensions": request.dimensions},
        )  # fmt: skip
        lease = leases.Lease(turn_id=str(turn.pk))
        turn.lease_token, turn.lease_expires_at = lease.token, leases.lease_expiry()
        with transaction.atomic():
            rawsql.insert([turn])
            rawsql.insert([Message(session=session, turn=turn, role=Message.Role.USER, content=count.describe(request))])
            wallet_hold_place(
                user=user, amount=count.hold, reference=str(turn.pk), spend_limits=spend_limits, reference_is_new=True
            )
            turns_in_flight_check(user=user, membership_id=attribution.membership_id)
            if session.updated_at is None or now - session.updated_at > SESSION_TOUCH_RESOLUTION:
                ChatSession.objects.filter(pk=session.pk).update(updated_at=now)
    except BaseException:
        reservation.release()
        raise
    leases.lease_hold(lease)  # renewed while the call lasts (where a keeper runs)
    return turn, count, lease


def embedding_outcome(calls: list[LLMCall], result: EmbeddingResult | None) -> TurnOutcome:
    outcome = TurnOutcome(llm_calls=calls, prior_messages=[])
    if result is None:
        outcome.error = attempts_error(calls) or "No active upstream serves this model alias, or the call failed."
    return outcome


def embedding_turn_finish(*, turn: Turn, outcome: TurnOutcome, lease: leases.Lease) -> Turn:
    """Writes the call's outcome once (turn_complete under this run's lease): one
    debit, or the hold released. When the database is away the outcome is kept in
    Redis for the run that takes the turn over once the lease lapses (it writes it
    instead of failing the turn), and the error is raised."""
    try:
        return turn_complete(turn=turn, outcome=outcome, lease_token=lease.token)
    except DATABASE_DOWN:
        outcome_keep(turn.pk, outcome)
        raise
    finally:
        leases.lease_drop(lease)


def embedding_turn_abandon(*, turn_id: UUID | str, lease: leases.Lease) -> None:
    """The client left before the call began (core.asgi's on_abandoned): the turn ends
    cancelled, its hold released, nothing charged."""
    turn = Turn.objects.select_related("user").get(pk=turn_id)
    embedding_turn_finish(turn=turn, outcome=TurnOutcome(cancelled=True, prior_messages=[]), lease=lease)
