"""The one API field for money. Amounts leave the API as strings written by
billing.money's formatters, never as floats: ledger amounts at 8 places, usage
figures at 4."""

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.money import format_ledger, format_usage

_FORMATTERS = {"ledger": format_ledger, "usage": format_usage}


@extend_schema_field({"type": "string", "format": "decimal", "nullable": True, "example": "1.25000000"})
class MoneyField(serializers.Field):
    """Read-only money out as a string; `precision` is "ledger" (8 places, the
    default) or "usage" (4 places)."""

    def __init__(self, *, precision: str = "ledger", **kwargs) -> None:  # noqa: ANN003
        kwargs.setdefault("read_only", True)
        self._format = _FORMATTERS[precision]
        super().__init__(**kwargs)

    def to_representation(self, value: Decimal) -> str | None:
        return self._format(value)
