from decimal import Decimal

from django import template

from billing.money import format_usage

register = template.Library()


@register.filter
def usage_credits(value: Decimal | None) -> str:
    """Credits as the API writes them (4 places, half up), never through a float."""
    return format_usage(value) or ""
