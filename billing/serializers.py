from django.conf import settings
from rest_framework import serializers

from billing.fields import MoneyField
from billing.models import CreditGrant, CreditTransaction, ModelPrice
from core.fields import StrictCharField


class WalletGrantSerializer(serializers.ModelSerializer):
    amount = MoneyField()
    remaining = MoneyField(help_text="Credits of this grant not used (nor expired) yet.")
    promotional = serializers.BooleanField(read_only=True, help_text="Promotional credits are used before any others.")
    expires_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="When what is left of it expires (an `expiry` ledger row); null: never.",
    )

    class Meta:
        model = CreditGrant
        fields = ["id", "amount", "remaining", "promotional", "expires_at", "created_at"]
        read_only_fields = fields


class WalletSerializer(serializers.Serializer):
    """Reads billing.selectors.wallet_status()."""

    balance = MoneyField()
    held = MoneyField(help_text="Reserved for turns in flight (their worst-case cost).")
    available = MoneyField(help_text="balance - held")
    low_balance = serializers.BooleanField(read_only=True)
    low_balance_threshold = MoneyField()
    enforcement = serializers.ChoiceField(choices=["warn", "block"], read_only=True)
    grants = WalletGrantSerializer(
        many=True,
        read_only=True,
        help_text=(
            "Promotional or expiring grants with credits left, in the order credits are used: promotional first, "
            "then the earliest expiring; then the rest of the balance (bought credits, which never expire)."
        ),
    )


class SavedCardSerializer(serializers.Serializer):
    brand = serializers.CharField(read_only=True)
    last4 = serializers.CharField(read_only=True)
    saved_at = serializers.DateTimeField(read_only=True)


class AutoTopUpSerializer(serializers.Serializer):
    """Reads billing.stripe.selectors.auto_top_up_status()."""

    enabled = serializers.BooleanField(read_only=True)
    threshold = MoneyField(allow_null=True, help_text="Credits; null while off.")
    amount_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, read_only=True, allow_null=True, help_text="Charged each time; null while off."
    )
    card = SavedCardSerializer(read_only=True, allow_null=True, help_text="The saved card, or null.")
    in_flight_top_up = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The auto top-up being charged now (one at most), or null."
    )
    disabled_reason = serializers.CharField(
        read_only=True, help_text="Why it was turned off, e.g. the saved card was declined; empty when on."
    )
    disabled_at = serializers.DateTimeField(read_only=True, allow_null=True)
    last_error = serializers.CharField(read_only=True, help_text="The last charge Stripe never answered, if any.")


class UserWalletSerializer(WalletSerializer):
    auto_top_up = AutoTopUpSerializer(read_only=True)


class TransactionSerializer(serializers.ModelSerializer):
    amount = MoneyField()
    balance_after = MoneyField()
    actor = serializers.PrimaryKeyRelatedField(read_only=True, help_text="Id of the staff user who granted.")

    class Meta:
        model = CreditTransaction
        fields = ["id", "kind", "amount", "balance_after", "reference", "reason", "actor", "created_at"]
        read_only_fields = fields


class AdminWalletSerializer(WalletSerializer):
    user_id = serializers.IntegerField(read_only=True)
    email = serializers.EmailField(read_only=True)
    transactions = TransactionSerializer(many=True, read_only=True, help_text="The most recent, newest first.")


class GrantSerializer(serializers.Serializer):
    """Format only; the rules (positive, at most ADMIN_GRANT_MAX) are the service's,
    shared with the admin page and `grant_credits`."""

    amount = serializers.DecimalField(
        max_digits=18,
        decimal_places=8,
        help_text=f"Credits, > 0 and at most ADMIN_GRANT_MAX ({settings.ADMIN_GRANT_MAX}); up to 8 decimal places.",
    )
    reason = StrictCharField(max_length=500)
    promotional = serializers.BooleanField(
        default=False, help_text="Promotional credits are used before any others (bought credits last)."
    )
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="When what is left of the grant expires (must be in the future); null or absent: never.",
    )


class GrantedSerializer(serializers.Serializer):
    transaction = TransactionSerializer(read_only=True)
    wallet = WalletSerializer(read_only=True)


class ModelPriceSerializer(serializers.ModelSerializer):
    input_credits_per_mtok = MoneyField()
    output_credits_per_mtok = MoneyField()

    class Meta:
        model = ModelPrice
        fields = ["alias", "provider", "provider_model", "input_credits_per_mtok", "output_credits_per_mtok"]
        read_only_fields = fields
