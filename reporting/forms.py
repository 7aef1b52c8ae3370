"""Filters of the admin usage page: the API's query parameters as a Django form, so
the admin renders and validates them the admin way (errors shown next to the field)."""

from datetime import date

from django import forms

from accounts.models import User
from billing.models import ModelPrice
from core.pagination import BIGINT_MAX
from reporting.selectors import BUCKETS


class UsageFilterForm(forms.Form):
    user_id = forms.IntegerField(
        required=False, min_value=1, max_value=BIGINT_MAX, label="User id", widget=forms.NumberInput(attrs={"size": 8})
    )
    model_alias = forms.ChoiceField(required=False, label="Model")
    from_date = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    to_date = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    bucket = forms.ChoiceField(required=False, choices=[(b, b.title()) for b in BUCKETS], label="Per")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Every alias ever priced: each LLM call points at the price it was charged at.
        aliases = ModelPrice.objects.order_by("alias").values_list("alias", flat=True).distinct()
        self.fields["model_alias"].choices = [("", "All models"), *((alias, alias) for alias in aliases)]

    def clean_user_id(self) -> int | None:
        user_id = self.cleaned_data["user_id"]
        if user_id is not None and not User.objects.filter(pk=user_id).exists():
            raise forms.ValidationError("No user with this id.")
        return user_id

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
            "user_id": data["user_id"],
            "model_alias": data["model_alias"] or None,
            "from_date": data["from_date"],
            "to_date": data["to_date"],
            "bucket": data["bucket"] or "day",
        }
