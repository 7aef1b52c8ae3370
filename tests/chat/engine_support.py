"""Shared pieces of the engine tests (round tables, orchestrator, tool loop, summaries):
prices with 8-decimal rates (so every cost needs the round-up), a funded owner, and
the pricing rule computed independently of billing.money."""

import json
from decimal import ROUND_CEILING, Decimal

from billing.models import CreditTransaction, ModelPrice, Wallet
from billing.services import wallet_grant
from chat.models import ChatSession, Participant
from chat.services.participants import participant_create, session_mode_change

IN_PRICE = Decimal("3.33333333")
OUT_PRICE = Decimal("7.77777777")
START = Decimal("100.00000000")


def price_for(alias: str, provider: str = "local", **extra) -> ModelPrice:
    values = {"context_tokens": 8192, "max_output_tokens": 256, **extra}
    return ModelPrice.objects.create(
        alias=alias, provider=provider, provider_model=f"{provider}-{alias}",
        input_credits_per_mtok=IN_PRICE, output_credits_per_mtok=OUT_PRICE, **values,
    )  # fmt: skip


def cost(input_tokens: int, output_tokens: int) -> Decimal:
    exact = (Decimal(input_tokens) * IN_PRICE + Decimal(output_tokens) * OUT_PRICE) / Decimal(1_000_000)
    return exact.quantize(Decimal("0.00000001"), rounding=ROUND_CEILING)


def fund(user, amount: Decimal = START) -> None:  # noqa: ANN001
    wallet_grant(user=user, amount=amount, reason="test credits")


def balance(user) -> Decimal:  # noqa: ANN001
    return Wallet.objects.get(user=user).balance


def debits(user) -> list[CreditTransaction]:  # noqa: ANN001
    return list(CreditTransaction.objects.filter(wallet__user=user, kind="debit"))


def panel(session: ChatSession, *members: tuple[str, str], mode: str = "roundtable",
          orchestrator_alias: str | None = None) -> list[Participant]:  # fmt: skip
    made = [participant_create(session=session, name=name, model_alias=alias, system_prompt=f"You are the {name}.")
            for name, alias in members]  # fmt: skip
    session_mode_change(session=session, mode=mode, orchestrator_alias=orchestrator_alias)
    return made


def post_turn(client, session: ChatSession, content: str, **headers):  # noqa: ANN001, ANN201
    return client.post(f"/api/v1/sessions/{session.pk}/turns", {"content": content}, format="json", **headers)


def sent_text(request) -> str:  # noqa: ANN001
    """Everything a fake server received in one request, as text (for leak checks)."""
    return json.dumps(request.body)
