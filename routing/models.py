"""Where a model alias's calls go: upstreams (a provider host with its key's
environment variable) and the deployments serving each alias, tried in priority
order (chat.engine.metering). The alias's price stays in billing.ModelPrice: a user
pays it whichever deployment serves."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

# A POSIX environment variable name: the key's NAME is stored, never the key.
ENV_NAME = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]*$", "An environment variable name: letters, digits and _.")
HTTP_URL = RegexValidator(r"^https?://", "An http:// or https:// URL, or empty for the kind's default host.")
# Headers that would carry a key: keys live in the environment, never in a row.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"})


def headers_validate(headers: Any) -> None:  # noqa: ANN401 (a JSON value, checked here)
    """Extra request headers: a JSON object of names to text, no line breaks, no key."""
    if not isinstance(headers, dict):
        raise ValidationError('A JSON object of header names and values, e.g. {"X-Title": "Parley"}.')
    for name, value in headers.items():
        if not isinstance(value, str) or not name.strip():
            raise ValidationError(f"Header {name!r}: a name and a text value (a JSON string; quote a number).")
        if any(char in name + value for char in "\r\n"):
            raise ValidationError(f"Header {name!r}: no line breaks.")
        if name.strip().lower() in SECRET_HEADERS:
            raise ValidationError(
                f"Header {name!r} carries a key. Keys are never stored: put the key in an environment variable "
                "and name that variable in api_key_env."
            )


class Upstream(models.Model):
    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible (OpenAI, OpenRouter, Groq, vLLM, Ollama, llama.cpp)"
        ANTHROPIC = "anthropic", "Anthropic"
        LOCAL = "local", "Local (offline, built in)"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    base_url = models.CharField(
        max_length=500, blank=True, validators=[HTTP_URL],
        help_text="Empty: the kind's default host (OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else the provider's own).",
    )  # fmt: skip
    api_key_env = models.CharField(
        max_length=128, blank=True, validators=[ENV_NAME],
        help_text="The NAME of the environment variable holding this upstream's key (empty: no key).",
    )  # fmt: skip
    timeout_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.001, "A positive number of seconds, or empty for LLM_TIMEOUT_SECONDS.")],
        help_text="Empty: LLM_TIMEOUT_SECONDS.",
    )
    max_retries = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="The SDK's own retries before the next deployment is tried. Empty: LLM_MAX_RETRIES.",
    )
    headers = models.JSONField(
        default=dict, blank=True, validators=[headers_validate], help_text="Extra request headers (not secrets)."
    )
    max_concurrent = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1, "At least 1, or empty for no limit.")],
        help_text="At most this many calls at once, over every process. Empty: no limit.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(timeout_seconds__isnull=True) | Q(timeout_seconds__gt=0),
                name="routing_upstream_timeout_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_concurrent__isnull=True) | Q(max_concurrent__gt=0),
                name="routing_upstream_max_concurrent_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """One way to serve an alias: an upstream and the model name it knows. Lower
    `priority` is tried first; among equal priorities, `weight` shares the calls."""

    alias = models.CharField(max_length=64, db_index=True)
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="deployments")
    provider_model = models.CharField(max_length=128)
    priority = models.PositiveIntegerField(default=0)
    weight = models.PositiveIntegerField(default=1)
    # What the upstream charges us, for the margin figure (credits per million tokens).
    cost_input_credits_per_mtok = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    cost_output_credits_per_mtok = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["alias", "priority", "id"]
        constraints = [
            models.UniqueConstraint(fields=["alias", "upstream", "provider_model"], name="routing_deployment_unique"),
            models.CheckConstraint(condition=Q(weight__gt=0), name="routing_deployment_weight_positive"),
            models.CheckConstraint(
                condition=(Q(cost_input_credits_per_mtok__isnull=True) | Q(cost_input_credits_per_mtok__gte=0))
                & (Q(cost_output_credits_per_mtok__isnull=True) | Q(cost_output_credits_per_mtok__gte=0)),
                name="routing_deployment_costs_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alias} → {self.upstream.name}:{self.provider_model}"
