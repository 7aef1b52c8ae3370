"""Filters of the admin usage page: the API's query parameters as a Django form, so
the admin renders and validates them the admin way (errors shown next to the field).
One difference: staff think of users by email, so the user filter (`user`) takes an
email or an id; reporting.admin still reads `?user_id=` (the wallet page's "View usage"
link) as `user`. Likewise the organization filter takes a slug or an id; the member
filter a membership id (0: usage through no member's key, i.e. personal)."""

from datetime import date

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from accounts.models import User
from billing.models import ModelPrice
from core.pagination import BIGINT_MAX
from organizations.models import Membership, Organization
from reporting.selectors import BUCKETS, SOURCES


class UsageFilterForm(forms.Form):
    user = forms.CharField(
        required=False,
        max_length=254,
        label="User (email or id)",
        widget=forms.TextInput(attrs={"style": "width: 10em", "placeholder": "email"}),
    )
    model_alias = forms.ChoiceField(required=False, label="Model")
    from_date = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    to_date = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    bucket = forms.ChoiceField(required=False, choices=[(b, b.title()) for b in BUCKETS], label="Per")
    source = forms.ChoiceField(
        required=False, label="Source",
        # Short labels and narrow fields: the filter row stays one line at 1280 px (the By
        # source table says more; tests/browser/test_console_pages.py checks the row).
        choices=[("", "All"), *((s, {"chat": "Chat API", "openai": "/v1", "embeddings": "/v1/embeddings"}[s]) for s in SOURCES)],
    )  # fmt: skip

    end_user = forms.IntegerField(
        required=False, min_value=1, max_value=BIGINT_MAX, label="End user",
        widget=forms.NumberInput(attrs={"style": "width: 5em", "title": "An end user's id"}),
    )  # fmt: skip
    purpose = forms.RegexField(
        regex=r"^[A-Za-z0-9_.:-]{1,32}$", required=False, max_length=32, label="Purpose",
        widget=forms.TextInput(attrs={"style": "width: 5em", "placeholder": "title"}),
        error_messages={"invalid": "1-32 letters, digits, '_', '.', ':' or '-'."},
    )  # fmt: skip

    organization = forms.CharField(
        required=False, max_length=50, label="Organization",
        widget=forms.TextInput(attrs={"style": "width: 7em", "placeholder": "slug or id", "title": "An organization's slug or id"}),
    )  # fmt: skip
    member = forms.IntegerField(
        required=False, min_value=0, max_value=BIGINT_MAX, label="Member",
        widget=forms.NumberInput(attrs={"style": "width: 4.5em", "title": "A membership id; 0: personal usage"}),
    )  # fmt: skip

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Every alias ever priced: each LLM call points at the price it was charged at.
        aliases = ModelPrice.objects.order_by("alias").values_list("alias", flat=True).distinct()
        self.fields["model_alias"].choices = [("", "All"), *((alias, alias) for alias in aliases)]

    def clean_user(self) -> int | None:
        """The user's id, from an id or an email (case-insensitive, as at login)."""
        value = self.cleaned_data["user"].strip()
        if not value:
            return None
        if value.isdigit():
            user_id = int(value)
            if not 1 <= user_id <= BIGINT_MAX or not User.objects.filter(pk=user_id).exists():
                raise forms.ValidationError("No user with this id.")
            return user_id
        try:
            validate_email(value)
        except ValidationError:
            raise forms.ValidationError("Enter an email address or a user id.") from None
        user_id = User.objects.filter(email__iexact=value).values_list("pk", flat=True).first()
        if user_id is None:
            raise forms.ValidationError("No user with this email.")
        return user_id

    def clean_organization(self) -> int | None:
        """The organization's id, from an id or a slug."""
        value = self.cleaned_data["organization"].strip()
        if not value:
            return None
        if value.isdigit():
            organization_id = int(value)
            if not 1 <= organization_id <= BIGINT_MAX or not Organization.objects.filter(pk=organization_id).exists():
                raise forms.ValidationError("No organization with this id.")
            return organization_id
        organization_id = Organization.objects.filter(slug=value.lower()).values_list("pk", flat=True).first()
        if organization_id is None:
            raise forms.ValidationError("No organization with this slug.")
        return organization_id

    def clean_member(self) -> int | None:
        value = self.cleaned_data["member"]
        if value and not Membership.objects.filter(pk=value).exists():
            raise forms.ValidationError("No member with this id.")
        return value

    def clean(self) -> dict:
        data = super().clean()
        start: date | None = data.get("from_date")
        end: date | None = data.get("to_date")
        if start and end and start > end:
            self.add_error("from_date", "From must not be after To.")
        return data

    def filters(self) -> dict:
        data = self.cleaned_data
        return {
            "user_id": data["user"],
            "model_alias": data["model_alias"] or None,
            "from_date": data["from_date"],
            "to_date": data["to_date"],
            "bucket": data["bucket"] or "day",
            "source": data["source"] or None,
            "end_user_id": data["end_user"],
            "purpose": data["purpose"] or None,
            "organization_id": data["organization"],
            "member_id": data["member"],
        }
