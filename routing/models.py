"""Where a model alias's calls go: upstreams (a provider host with its key's
environment variable) and the deployments serving each alias, tried in priority
order (chat.engine.metering). The alias's price stays in billing.ModelPrice: a user
pays it whichever deployment serves."""

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

# A POSIX environment variable name: the key's NAME is stored, never the key.
ENV_NAME = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]*$", "An environment variable name: letters, digits and _.")


class Upstream(models.Model):
    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible (OpenAI, OpenRouter, Groq, vLLM, Ollama, llama.cpp)"
        ANTHROPIC = "anthropic", "Anthropic"
        LOCAL = "local", "Local (offline, built in)"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    base_url = models.CharField(
        max_length=500, blank=True,
        help_text="Empty: the kind's default host (OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else the provider's own).",
    )  # fmt: skip
    api_key_env = models.CharField(
        max_length=128, blank=True, validators=[ENV_NAME],
        help_text="The NAME of the environment variable holding this upstream's key (empty: no key).",
    )  # fmt: skip
    timeout_seconds = models.FloatField(null=True, blank=True, help_text="Empty: LLM_TIMEOUT_SECONDS.")
    max_retries = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The SDK's own retries before the next deployment is tried. Empty: LLM_MAX_RETRIES."
    )
    headers = models.JSONField(default=dict, blank=True, help_text="Extra request headers (not secrets).")
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many calls at once, over every process. Empty: no limit."
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
            models.UniqueConstraint(
                fields=["alias", "upstream", "provider_model"], name="routing_deployment_unique"
            ),
            models.CheckConstraint(condition=Q(weight__gt=0), name="routing_deployment_weight_positive"),
            models.CheckConstraint(
                condition=(Q(cost_input_credits_per_mtok__isnull=True) | Q(cost_input_credits_per_mtok__gte=0))
                & (Q(cost_output_credits_per_mtok__isnull=True) | Q(cost_output_credits_per_mtok__gte=0)),
                name="routing_deployment_costs_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.alias} → {self.upstream.name}:{self.provider_model}"
