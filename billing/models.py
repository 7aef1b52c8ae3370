import uuid
from decimal import Decimal

import pgtrigger
from django.conf import settings
from django.db import models
from django.db.models import Q

from billing.money import format_ledger

LEDGER_DIGITS = {"max_digits": 18, "decimal_places": 8}


# Granting credits (admin page, API, `grant_credits --actor`) needs this, not just is_staff.
GRANT_PERMISSION = "billing.grant_credits"


class Wallet(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet")
    # Cached sum of the ledger; written only by billing.services under select_for_update.
    balance = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))
    # Cached sum of active holds (worst-case cost of turns in flight).
    held = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))
    # Cached sum of CreditGrant.remaining (promotional or expiring credits, used before
    # the rest). Zero for most wallets: a debit then skips the grants entirely (the
    # PostgreSQL debit statement tests it on the row it locks, billing/_sql.py).
    grants_remaining = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # One wallet per user is the OneToOneField's unique index. The balance may go
        # negative (a take-back is never skipped); what is held never can.
        constraints = [
            models.CheckConstraint(condition=Q(held__gte=0), name="billing_wallet_held_not_negative"),
            models.CheckConstraint(
                condition=Q(grants_remaining__gte=0), name="billing_wallet_grants_remaining_not_negative"
            ),
        ]
        permissions = [("grant_credits", "Can grant credits to a wallet")]

    def __str__(self) -> str:
        return f"Wallet of {self.user}"

    @property
    def available(self) -> Decimal:
        return self.balance - self.held


class TransactionKind(models.TextChoices):
    GRANT = "grant"
    TOPUP = "topup"
    DEBIT = "debit"
    REFUND = "refund"
    REVERSAL = "reversal"
    ADJUSTMENT = "adjustment"
    # What was left of a CreditGrant when it expired, written by the sweep or by the
    # first debit that found it due; reference: the grant's id (billing.services.grant_expire).
    EXPIRY = "expiry"


POSITIVE_KINDS = (TransactionKind.GRANT, TransactionKind.TOPUP, TransactionKind.REFUND)
NEGATIVE_KINDS = (TransactionKind.DEBIT, TransactionKind.REVERSAL, TransactionKind.EXPIRY)
# These always answer an outside event (a turn, a PaymentIntent, a refund or
# dispute, a grant's expiry), so they always carry the reference that makes a
# replay harmless.
REFERENCED_KINDS = (TransactionKind.DEBIT, TransactionKind.TOPUP, TransactionKind.REVERSAL, TransactionKind.EXPIRY)


class CreditTransaction(models.Model):
    """One row per balance change. Append-only: no code path updates or deletes it, and
    on PostgreSQL the database refuses it too (a trigger: an UPDATE or DELETE of a row
    raises; a correction is a new row). The triggers fire on those statements only: an
    INSERT, the ledger's hot path, runs none."""

    # No index of its own: billing_txn_wallet_created starts with wallet (every ledger
    # row written updates each index, and the hot wallet writes while holding its lock).
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="transactions", db_index=False)
    kind = models.CharField(max_length=16, choices=TransactionKind.choices)
    amount = models.DecimalField(**LEDGER_DIGITS)
    balance_after = models.DecimalField(**LEDGER_DIGITS)
    # Idempotency key: a turn id, a PaymentIntent id, a refund id. Unique per kind.
    reference = models.CharField(max_length=255, null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    reason = models.CharField(max_length=500, blank=True)
    # Not indexed alone: every read of the ledger is per wallet (the index below) or
    # newest first over all rows (the admin list: by id, which grows with time).
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="billing_credittransaction_amount_not_zero"),
            models.CheckConstraint(
                condition=(
                    Q(kind__in=POSITIVE_KINDS, amount__gt=0)
                    | Q(kind__in=NEGATIVE_KINDS, amount__lt=0)
                    | Q(kind=TransactionKind.ADJUSTMENT)
                ),
                name="billing_credittransaction_sign_matches_kind",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=TransactionKind.values),
                name="billing_credittransaction_kind_known",
            ),
            models.CheckConstraint(
                condition=~Q(reference="") & (Q(reference__isnull=False) | ~Q(kind__in=REFERENCED_KINDS)),
                name="billing_credittransaction_reference_set",
            ),
            # Also the index behind the idempotency lookup of a repeated reference.
            models.UniqueConstraint(
                fields=["kind", "reference"],
                condition=Q(reference__isnull=False),
                name="billing_credittransaction_kind_reference_unique",
            ),
        ]
        indexes = [
            # Serves "own ledger, newest first" (users/me/transactions, admin wallet page).
            models.Index(fields=["wallet", "-created_at", "-id"], name="billing_txn_wallet_created"),
            # Serves the PROTECT check when a user is deleted; partial, since most rows
            # (debits, top-ups) have no actor and then cost this index nothing.
            models.Index(fields=["actor"], condition=Q(actor__isnull=False), name="billing_txn_actor"),
        ]
        triggers = [
            pgtrigger.Protect(name="ledger_append_only", operation=pgtrigger.Update | pgtrigger.Delete),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.reference or 'no ref'})"


class CreditGrant(models.Model):
    """A grant that is promotional, or expires, or both: a lot of credits that debits
    use before the rest of the balance (billing.selectors.grants_in_order gives the
    order). A plain grant, a top-up, a refund is just balance and has no CreditGrant.

    `remaining` moves only under the wallet lock: down by debits (the share each one
    took from this lot) and by `expiry` ledger rows; it never goes up. What the ledger
    says (the grant row, the debits in order, the expiry rows) must explain it:
    `reconcile_wallets` replays it (billing.selectors.grant_ledger_problems).

    On PostgreSQL the database refuses anything else (triggers): a lot is never
    deleted; of its columns only `remaining` changes, and only down, and `expired_at`,
    only from empty (billing.services: _grant_set_remaining, from a debit or an expiry)."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="grants")
    # The `grant` ledger row that brought these credits.
    transaction = models.OneToOneField(CreditTransaction, on_delete=models.PROTECT, related_name="lot")
    amount = models.DecimalField(**LEDGER_DIGITS)
    remaining = models.DecimalField(**LEDGER_DIGITS)
    promotional = models.BooleanField(default=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    # When its `expiry` row was written (by the sweep, or by a debit that found it due
    # first). Lots expired before expiry took everything left may have a second row.
    expired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount__gt=0, remaining__gte=0, remaining__lte=models.F("amount")),
                name="billing_creditgrant_remaining_within_amount",
            ),
            # Anything else is plain balance and needs no lot.
            models.CheckConstraint(
                condition=Q(promotional=True) | Q(expires_at__isnull=False),
                name="billing_creditgrant_promotional_or_expiring",
            ),
            models.CheckConstraint(
                condition=Q(expired_at__isnull=True) | Q(expires_at__isnull=False),
                name="billing_creditgrant_expired_only_if_expiring",
            ),
        ]
        triggers = [
            pgtrigger.Protect(name="lot_never_deleted", operation=pgtrigger.Delete),
            pgtrigger.ReadOnly(name="lot_moves_only_remaining", exclude=["remaining", "expired_at"]),
            pgtrigger.Protect(
                name="lot_remaining_only_down",
                operation=pgtrigger.Update,
                condition=pgtrigger.Q(new__remaining__gt=pgtrigger.F("old__remaining"))
                | pgtrigger.Q(old__expired_at__isnull=False, new__expired_at__df=pgtrigger.F("old__expired_at")),
            ),
        ]
        indexes = [
            # Serves the debit's read of a wallet's open lots (only wallets whose
            # grants_remaining > 0 ask) and GET users/me/wallet's `grants`.
            models.Index(fields=["wallet"], condition=Q(remaining__gt=0), name="billing_grant_open"),
            # Serves the expiry sweep: open lots whose time has come.
            models.Index(fields=["expires_at"], condition=Q(remaining__gt=0), name="billing_grant_expiring"),
        ]

    def __str__(self) -> str:
        return f"Grant {self.pk}: {format_ledger(self.remaining)} of {format_ledger(self.amount)} left"

    @property
    def consumption_key(self) -> tuple:
        """THE order credits are used in (debits take from the lots in it, then from the
        rest of the balance; the expiry sweep places the wallet's holds in it too):
        promotional lots first, then the earliest expiring (a lot that never expires
        after those that do), then the oldest. Fixed for the life of a lot."""
        return (
            not self.promotional,
            self.expires_at is None,
            self.expires_at.timestamp() if self.expires_at else 0,
            self.pk,
        )


class SpendCounter(models.Model):
    """What one limit (an end user's or a member's budget, an API key's budget, or an
    account's spending cap) has spent and holds in one window (billing.limits). Keyed
    by the window's start, so a new window is a new row starting at zero: nothing has
    to reset it. A key's counter has `api_key` set; an organization member's has
    `membership`; an account's has only `user`. Written only under the account's
    wallet lock (lock order: wallet, end-user, member, key, then account counter)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+", db_index=False
    )
    # An end user's counter has `end_user` (and its key) set.
    end_user = models.ForeignKey(
        "accounts.EndUser", on_delete=models.CASCADE, null=True, blank=True, related_name="+", db_index=False
    )
    # An organization member's counter has `membership` set (and `user`, the
    # organization's account).
    membership = models.ForeignKey(
        "organizations.Membership", on_delete=models.CASCADE, null=True, blank=True, related_name="+",
        db_index=False,
    )  # fmt: skip
    # "" for a lifetime counter (its window_start is the epoch), else day/week/month.
    window = models.CharField(max_length=8, blank=True)
    window_start = models.DateTimeField()
    spent = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))
    held = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))

    class Meta:
        constraints = [
            # Also the indexes of the counter look-ups (a key's, an account's).
            models.UniqueConstraint(
                fields=["api_key", "window", "window_start"],
                condition=Q(api_key__isnull=False, end_user__isnull=True),
                name="billing_spendcounter_key_window_unique",
            ),
            models.UniqueConstraint(
                fields=["end_user", "window", "window_start"],
                condition=Q(end_user__isnull=False),
                name="billing_spendcounter_end_user_window_unique",
            ),
            models.UniqueConstraint(
                fields=["membership", "window", "window_start"],
                condition=Q(membership__isnull=False),
                name="billing_spendcounter_member_window_unique",
            ),
            models.UniqueConstraint(
                fields=["user", "window", "window_start"],
                condition=Q(api_key__isnull=True, membership__isnull=True),
                name="billing_spendcounter_account_window_unique",
            ),
            models.CheckConstraint(condition=Q(spent__gte=0, held__gte=0), name="billing_spendcounter_not_negative"),
        ]

    def __str__(self) -> str:
        if self.end_user_id:
            owner = f"end user {self.end_user_id}"
        elif self.membership_id:
            owner = f"member {self.membership_id}"
        else:
            owner = f"key {self.api_key_id}" if self.api_key_id else f"account {self.user_id}"
        return f"{owner} {self.window or 'lifetime'} from {self.window_start:%Y-%m-%d}: {self.spent} + {self.held}"


class CreditHold(models.Model):
    """Worst-case cost of an accepted turn, reserved until the turn settles."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SETTLED = "settled"
        RELEASED = "released"

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="holds")
    reference = models.CharField(max_length=255, unique=True)
    amount = models.DecimalField(**LEDGER_DIGITS)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # The limits this hold also counts against (billing.limits), in the window it was
    # placed in: its settlement moves the same counters, even after the window ended.
    key_counter = models.ForeignKey(
        SpendCounter, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    end_user_counter = models.ForeignKey(
        SpendCounter, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    cap_counter = models.ForeignKey(
        SpendCounter, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    member_counter = models.ForeignKey(
        SpendCounter, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="billing_credithold_amount_not_negative"),
            models.CheckConstraint(
                condition=Q(status="active", closed_at__isnull=True) | Q(~Q(status="active"), closed_at__isnull=False),
                name="billing_credithold_closed_at_matches_status",
            ),
        ]
        indexes = [
            # Serves the reconciliation of Wallet.held against active holds.
            models.Index(fields=["wallet"], condition=Q(status="active"), name="billing_hold_active"),
        ]


class ModelPrice(models.Model):
    """Price of a model alias. A price change is a new row (the old one deactivated),
    so the price an old call was charged at is never rewritten."""

    class Provider(models.TextChoices):
        LOCAL = "local"
        OPENAI = "openai"
        ANTHROPIC = "anthropic"

    class Kind(models.TextChoices):
        """What the alias serves: chat completions, or embeddings (/v1/embeddings,
        billed per input token at the input price)."""

        CHAT = "chat"
        EMBEDDING = "embedding"

    class Counting(models.TextChoices):
        # chat.llm.counting: how a call's tokens are counted where the provider says nothing.
        BYTES = "bytes", "UTF-8 bytes"
        O200K_BASE = "o200k_base", "o200k_base (GPT-4o, GPT-4.1, GPT-5, o-series)"
        CL100K_BASE = "cl100k_base", "cl100k_base (GPT-4, GPT-3.5)"

    alias = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT, db_default=Kind.CHAT)
    provider = models.CharField(max_length=16, choices=Provider.choices)
    provider_model = models.CharField(max_length=128)
    input_credits_per_mtok = models.DecimalField(max_digits=18, decimal_places=8)
    output_credits_per_mtok = models.DecimalField(max_digits=18, decimal_places=8)
    # Token classes billed apart; empty: the input price.
    cached_input_credits_per_mtok = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True,
        help_text="Cached input (OpenAI's cached_tokens, Anthropic's cache reads). Empty: the input price.",
    )  # fmt: skip
    cache_write_credits_per_mtok = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True,
        help_text="Input written to the cache (Anthropic's cache_creation_input_tokens). Empty: the input price.",
    )  # fmt: skip
    # A long-context tier: a call whose input passes the threshold is priced at these.
    tier_threshold_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="A call with more input tokens than this is priced at the tier's prices."
    )
    tier_input_credits_per_mtok = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    tier_output_credits_per_mtok = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    context_tokens = models.PositiveIntegerField(default=8192, help_text="Token budget for the context.")
    max_output_tokens = models.PositiveIntegerField(default=1024)
    counting = models.CharField(
        max_length=16, choices=Counting.choices, default=Counting.BYTES,
        help_text="How input is counted for holds and for calls that report no usage: an OpenAI encoding "
        "(exact for OpenAI's models) or UTF-8 bytes (never fewer than a byte-level tokenizer's tokens).",
    )  # fmt: skip
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["alias", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["alias"], condition=Q(active=True), name="billing_modelprice_one_active_per_alias"
            ),
            models.CheckConstraint(
                condition=Q(input_credits_per_mtok__gte=0, output_credits_per_mtok__gte=0),
                name="billing_modelprice_prices_not_negative",
            ),
            models.CheckConstraint(
                condition=(Q(cached_input_credits_per_mtok__isnull=True) | Q(cached_input_credits_per_mtok__gte=0))
                & (Q(cache_write_credits_per_mtok__isnull=True) | Q(cache_write_credits_per_mtok__gte=0))
                & (Q(tier_input_credits_per_mtok__isnull=True) | Q(tier_input_credits_per_mtok__gte=0))
                & (Q(tier_output_credits_per_mtok__isnull=True) | Q(tier_output_credits_per_mtok__gte=0)),
                name="billing_modelprice_class_prices_not_negative",
            ),
            # A tier is its threshold and both its prices, or nothing.
            models.CheckConstraint(
                condition=Q(
                    tier_threshold_tokens__isnull=True, tier_input_credits_per_mtok__isnull=True,
                    tier_output_credits_per_mtok__isnull=True,
                )
                | Q(
                    tier_threshold_tokens__gt=0, tier_input_credits_per_mtok__isnull=False,
                    tier_output_credits_per_mtok__isnull=False,
                ),
                name="billing_modelprice_tier_whole",
            ),  # fmt: skip
            models.CheckConstraint(
                condition=Q(context_tokens__gt=0, max_output_tokens__gt=0) & ~Q(alias=""),
                name="billing_modelprice_alias_and_budgets_set",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alias} → {self.provider}:{self.provider_model}"

    @property
    def cached_input_price(self) -> Decimal:
        if self.cached_input_credits_per_mtok is None:
            return self.input_credits_per_mtok
        return self.cached_input_credits_per_mtok

    @property
    def cache_write_price(self) -> Decimal:
        if self.cache_write_credits_per_mtok is None:
            return self.input_credits_per_mtok
        return self.cache_write_credits_per_mtok


class TopUp(models.Model):
    """A Stripe top-up. The row is committed before Stripe is called and its
    `idempotency_key` is the PaymentIntent's idempotency key, so a retried create can
    never make two PaymentIntents. Webhook handlers (billing/stripe/services.py) change it only
    under select_for_update; the ledger rows they write are keyed by Stripe ids
    (PaymentIntent, charge + cumulative refunded cents, dispute), so a redelivered
    event changes nothing twice."""

    class Status(models.TextChoices):
        CREATED = "created"
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        PARTIALLY_REFUNDED = "partially_refunded"
        REFUNDED = "refunded"
        DISPUTED = "disputed"

    class Mode(models.TextChoices):
        # How the customer pays: Stripe.js confirms the PaymentIntent (the default), a
        # Stripe-hosted Checkout page, or an off-session charge of the saved card.
        PAYMENT_INTENT = "payment_intent", "Payment intent"
        CHECKOUT = "checkout", "Checkout"
        AUTO = "auto", "Auto top-up"

    class DisputeStatus(models.TextChoices):
        NONE = "", "none"
        OPEN = "open"
        WON = "won"
        LOST = "lost"
        # Closed with no funds lost: an inquiry closed, or prevented (Visa RDR, refunded instead).
        CLOSED = "closed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="top_ups")
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # The client's Idempotency-Key header, if it sent one: the same key from the same
    # user answers this top-up (and so this PaymentIntent) again.
    request_key = models.CharField(max_length=255, blank=True, default="")
    amount_usd = models.DecimalField(max_digits=10, decimal_places=2)
    credits = models.DecimalField(**LEDGER_DIGITS)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.CREATED)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.PAYMENT_INTENT)
    payment_intent_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    # Checkout mode: the session the customer pays in (its PaymentIntent is learned
    # from checkout.session.completed, or from payment_intent.succeeded's metadata).
    checkout_session_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    charge_id = models.CharField(max_length=255, blank=True)
    granted_at = models.DateTimeField(null=True, blank=True)
    # What Stripe last said of the charge's refunds: its amount_refunded (cents), as of
    # the `created` time of the event that said it (failed refunds no longer count).
    refunded_cents = models.PositiveBigIntegerField(default=0)
    refunds_as_of = models.PositiveBigIntegerField(default=0)
    failed_refunds = models.JSONField(default=list, blank=True)  # refund ids seen failed or canceled
    # Each dispute of the charge as last seen: {dispute id: {"status", "amount",
    # "withdrawn" (cents Stripe holds now), "transactions", "as_of"}}.
    disputes = models.JSONField(default=dict, blank=True)
    # The credits taken back, split by cause: refunds first, disputes for what their
    # withdrawn funds add beyond the refunds, never more than `credits` together.
    refunded_credits = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))
    dispute_status = models.CharField(max_length=8, choices=DisputeStatus.choices, default="", blank=True)
    disputed_credits = models.DecimalField(**LEDGER_DIGITS, default=Decimal("0"))
    error = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount_usd__gt=0, credits__gt=0), name="billing_topup_amounts_positive"),
            models.CheckConstraint(
                condition=Q(refunded_credits__gte=0, refunded_credits__lte=models.F("credits")),
                name="billing_topup_refunded_within_credits",
            ),
            # Also the index behind the lookup of a replayed Idempotency-Key.
            models.UniqueConstraint(
                fields=["user", "request_key"],
                condition=~Q(request_key=""),
                name="billing_topup_user_request_key_unique",
            ),
            # At most one auto top-up in flight per wallet, whatever the concurrency (the
            # claim on AutoTopUp decides first; this is the database's own guarantee).
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(mode="auto", status__in=["created", "pending"]),
                name="billing_topup_one_auto_in_flight",
            ),
        ]
        indexes = [
            # Serves GET users/me/top-ups (own top-ups, newest first).
            models.Index(fields=["user", "-created_at"], name="billing_topup_user_created"),
        ]

    def __str__(self) -> str:
        return f"Top-up {self.amount_usd} USD ({self.status})"

    @property
    def amount_cents(self) -> int:
        return int(self.amount_usd * 100)


class TopUpEvent(models.Model):
    """A Stripe event Parley acts on, recorded from the signed webhook body alone (no
    Stripe call) and applied to its top-up once. One the handlers cannot match yet (a
    refund or dispute before its top-up has the PaymentIntent or charge id) stays
    `pending` with what it said, and is applied when its top-up appears (when the
    top-up learns the id, or by the sweeper).

    On PostgreSQL the database keeps the record as Stripe said it (triggers): never
    deleted; what the event said (its id, type, time, ids and data) never changes; only
    a pending event changes, and only in what applying it moves (`state`, `outcome`,
    `topup`, `applied_at`: billing.stripe.services._event_apply and _event_close). An
    applied or ignored event is final."""

    class State(models.TextChoices):
        PENDING = "pending"
        APPLIED = "applied"
        IGNORED = "ignored"

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    # The event's `created` (seconds): orders what several events say of one object.
    stripe_created = models.PositiveBigIntegerField()
    api_version = models.CharField(max_length=64, blank=True)
    payment_intent_id = models.CharField(max_length=255, blank=True)
    charge_id = models.CharField(max_length=255, blank=True)
    data = models.JSONField()  # the event's data.object
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    outcome = models.CharField(max_length=255, blank=True)
    topup = models.ForeignKey(TopUp, on_delete=models.PROTECT, null=True, blank=True, related_name="events")
    received_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["stripe_created", "id"]
        indexes = [
            # Serve the look-up of a top-up's pending events by its PaymentIntent or
            # charge id (partial: applied events, nearly all, cost these nothing).
            models.Index(
                fields=["payment_intent_id"], condition=Q(state="pending"), name="billing_topupevent_pending_pi"
            ),
            models.Index(fields=["charge_id"], condition=Q(state="pending"), name="billing_topupevent_pending_ch"),
        ]
        triggers = [
            pgtrigger.Protect(name="event_never_deleted", operation=pgtrigger.Delete),
            pgtrigger.ReadOnly(
                name="event_keeps_what_stripe_said", exclude=["state", "outcome", "topup", "applied_at"]
            ),
            pgtrigger.Protect(
                name="event_final_once_applied",
                operation=pgtrigger.Update,
                condition=~pgtrigger.Q(old__state="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id} ({self.state})"


class AutoTopUp(models.Model):
    """A user's auto top-up: the card saved through a Checkout Session in setup mode,
    and, when on, the threshold under which a settled debit charges that card
    `amount_usd` off-session (billing/stripe/services.py).

    `in_flight` is the claim: set by one conditional UPDATE (only while it is null),
    cleared in the transaction that settles that top-up, so one wallet never has two
    auto top-ups in flight. A declined card turns `enabled` off and says why in
    `disabled_reason`."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="auto_top_up")
    enabled = models.BooleanField(default=False)
    threshold = models.DecimalField("threshold (credits)", **LEDGER_DIGITS, default=Decimal("0"))
    amount_usd = models.DecimalField("amount (USD)", max_digits=10, decimal_places=2, default=Decimal("0"))
    # The saved card (from the SetupIntent of a completed setup-mode Checkout Session).
    customer_id = models.CharField(max_length=255, blank=True)
    payment_method_id = models.CharField(max_length=255, blank=True)
    card_brand = models.CharField(max_length=32, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    card_saved_at = models.DateTimeField(null=True, blank=True)
    # The latest setup-mode Checkout Session started for this user.
    setup_session_id = models.CharField(max_length=255, blank=True)
    in_flight = models.OneToOneField(
        TopUp, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=255, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=255, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "auto top-up"
        constraints = [
            models.CheckConstraint(
                condition=Q(enabled=False) | (Q(amount_usd__gt=0, threshold__gt=0) & ~Q(payment_method_id="")),
                name="billing_autotopup_enabled_is_complete",
            ),
            models.CheckConstraint(
                condition=Q(in_flight__isnull=True, claimed_at__isnull=True)
                | Q(in_flight__isnull=False, claimed_at__isnull=False),
                name="billing_autotopup_claimed_at_matches_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"Auto top-up of {self.user} ({'on' if self.enabled else 'off'})"
