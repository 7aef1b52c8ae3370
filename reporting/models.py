from decimal import Decimal

from django.conf import settings
from django.db import models


class UsageDaily(models.Model):
    """Rollup of LLM calls per (day, user, model alias, source, end user, purpose, member), kept exact in the same
    transaction that records each call. Rebuild with `manage.py rebuild_usage_rollups`.
    `source` is the calls' session's (chat.ChatSession.Source): the chat API or the
    OpenAI-compatible endpoint."""

    day = models.DateField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    model_alias = models.CharField(max_length=64)
    source = models.CharField(max_length=16, default="chat")
    # The turn's end user (accounts.EndUser id; 0: none named) and the client's label of
    # the request (chat.Turn.purpose; "": none). A plain number, not a foreign key: the
    # unique key below must treat "none" as one value, which NULL is not.
    end_user_id = models.BigIntegerField(default=0, db_default=0)
    purpose = models.CharField(max_length=32, blank=True, default="", db_default="")
    # A turn through an organization's key: the member who made the key
    # (organizations.Membership id; 0: none, a personal turn). `user` is then the
    # organization's account.
    membership_id = models.BigIntegerField(default=0, db_default=0)
    calls = models.PositiveIntegerField(default=0)
    # The token classes of chat.LLMCall, summed: cached and cache-write tokens are part
    # of input_tokens, reasoning tokens part of output_tokens.
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    credits = models.DecimalField(max_digits=20, decimal_places=4, default=Decimal("0"))

    class Meta:
        verbose_name = "daily usage rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "user", "model_alias", "source", "end_user_id", "purpose", "membership_id"],
                name="reporting_usagedaily_key_unique",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "day"], name="reporting_usage_user_day"),
            models.Index(fields=["model_alias", "day"], name="reporting_usage_alias_day"),
        ]


class Usage(UsageDaily):
    """The staff usage summary in the Django admin (/admin/reporting/usage/). A proxy,
    so the page sits in the admin index with its own view permission; no new table."""

    class Meta:
        proxy = True
        verbose_name = "usage summary"
        verbose_name_plural = "usage summary"
