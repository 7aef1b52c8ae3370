"""Usage events for the reporting tests: prices, sessions, turns and LLM calls written
the way the turn completion writes them (the calls inserted, then usage_rollup_add in
the same transaction). Tests choose each call's time, so `created_at` (auto_now_add)
is set right after the insert, still inside that transaction."""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from billing.models import ModelPrice
from billing.money import ledger_amount, usage_amount
from billing.pricing import TokenUsage, call_cost
from chat.models import ChatSession, LLMCall
from reporting.services import usage_rollup_add
from tests.chat.factories import TurnFactory


@dataclass(frozen=True)
class CallSpec:
    alias: str
    at: datetime
    input_tokens: int
    output_tokens: int
    purpose: str = LLMCall.Purpose.REPLY
    # Token classes: parts of input_tokens (cached, cache_write) and output_tokens (reasoning).
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def usage(self) -> TokenUsage:
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens,
        )


def price_for(alias: str) -> ModelPrice:
    return ModelPrice.objects.get(alias=alias, active=True)


def record_turn(
    *, session: ChatSession, calls: list[CallSpec], rollup: bool = True, end_user=None, purpose: str = "",  # noqa: ANN001
    membership=None,  # noqa: ANN001
) -> list[LLMCall]:
    """One completed turn (for `end_user`, labelled `purpose`; through an organization's
    key: `membership`, the member who made it, and `session` is the organization
    account's): its LLM calls and, unless `rollup` is off, their rollup, in one
    transaction like the completion."""
    with transaction.atomic():
        turn = TurnFactory(
            session=session, user=session.user, end_user=end_user, purpose=purpose, membership=membership
        )
        rows = []
        for spec in calls:
            price = price_for(spec.alias)
            cost = ledger_amount(call_cost(price, spec.usage))
            rows.append(
                LLMCall(
                    turn=turn,
                    user=session.user,
                    price=price,
                    purpose=spec.purpose,
                    model_alias=spec.alias,
                    provider=price.provider,
                    provider_model=price.provider_model,
                    input_tokens=spec.input_tokens,
                    cached_input_tokens=spec.cached_input_tokens,
                    cache_write_tokens=spec.cache_write_tokens,
                    output_tokens=spec.output_tokens,
                    reasoning_tokens=spec.reasoning_tokens,
                    cost=cost,
                    credits_burned=usage_amount(cost),
                )
            )
        created = LLMCall.objects.bulk_create(rows)
        for row, spec in zip(created, calls, strict=True):
            LLMCall.objects.filter(pk=row.pk).update(created_at=spec.at)
            row.created_at = spec.at
        if rollup:
            usage_rollup_add(llm_calls=created)
    return created
