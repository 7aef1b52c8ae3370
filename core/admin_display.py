"""Cells for the console's busiest lists (the ledger, turns, API keys), so each row
stays on one line at 1280 px: a date and time in 16 characters, and long text (an
email, a reference, a reason) cut to its column's width with the whole of it in the
cell's tooltip. The cutting is CSS (`.clip`, core/static/console/console.css), so a
search or a copy still finds the whole text in the page."""

from collections.abc import Callable
from datetime import datetime

from django.contrib import admin
from django.db.models import Model
from django.utils import timezone
from django.utils.html import format_html

EMPTY = "-"


def timestamp(value: datetime | None, *, day: bool = False) -> str:
    """The date and time to the minute in the console's time zone (UTC), "2026-12-07 04:13",
    or to the `day`, "2026-12-07"; the whole to the second in its tooltip. Django's default ("Dec. 7, 2026, 4:13 a.m.")
    wrapped onto three or four lines."""
    if value is None:
        return EMPTY
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        local.isoformat(), f"{local:%Y-%m-%d %H:%M:%S %Z}", f"{local:%Y-%m-%d}" if day else f"{local:%Y-%m-%d %H:%M}",
    )  # fmt: skip


def clipped(text: object, *, width: str = "14em") -> str:
    """`text` on one line, at most `width` wide (an ellipsis where it is cut), whole in its tooltip."""
    if text is None or text == "":
        return EMPTY
    shown = str(text)
    return format_html('<span class="clip" style="max-width: {}" title="{}">{}</span>', width, shown, shown)


def timestamp_column(
    field: str, description: str, *, ordering: str | None = None, day: bool = False
) -> Callable[[admin.ModelAdmin, Model], str]:
    """A list column showing the model's `field` as a `timestamp` (to the `day`, or the
    minute), sorted by `ordering` (by default that field)."""

    @admin.display(description=description, ordering=ordering or field)
    def column(model_admin: admin.ModelAdmin, obj: Model) -> str:
        return timestamp(getattr(obj, field), day=day)

    return column


def account_name(user: Model) -> str:
    """Who an account is, for a page that names a wallet's or a key's owner: a person's
    email, or "Organization Acme" for an organization's account (whose email, on a
    domain that receives no mail, says nothing to staff). Reads `user.organization`:
    select it with the user where a list shows many."""
    if getattr(user, "is_organization", False):
        return f"Organization {user.organization.name}"
    return str(user)
