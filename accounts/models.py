"""Accounts: users log in by email; API keys are stored only as a SHA-256 hash of
the full key (keys are 256-bit random, so a fast hash is safe and allows an
indexed lookup). The raw key is shown once, at creation."""

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string


class SpendWindow(models.TextChoices):
    """The period a credit budget or spending cap counts over (UTC; weeks start on
    Monday). No window (null) is a lifetime budget. billing.limits keys its counters
    by the window's start, so a new window starts at zero without any job."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class ApiKeyScope(models.TextChoices):
    """What a key may call: `chat` is the /api/v1 API, `openai` the /v1 endpoint.
    `keys` guards whatever raises what keys may spend (accounts.permissions.KeysScope):
    making keys, changing a key's limits or scopes, the account's spending cap, saving
    a card and turning on auto top-up. Without it a budgeted key cannot lift its own
    budget. Only API keys have scopes; a logged-in user (the staff console) has none."""

    CHAT = "chat", "chat: the /api/v1 API"
    OPENAI = "openai", "openai: the OpenAI-compatible /v1 endpoint"
    KEYS = "keys", "keys: make keys, change key limits and scopes, the account cap, cards, auto top-up"


def all_scopes() -> list[str]:
    """Every scope: the key `issue_api_key`, `seed_demo` and registration hand out."""
    return list(ApiKeyScope.values)


def default_scopes() -> list[str]:
    """A new key's scopes when none are asked for: it may call both APIs, not manage keys."""
    return [ApiKeyScope.CHAT.value, ApiKeyScope.OPENAI.value]


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra) -> "User":
        # Django's createsuperuser creates users through the model's manager; the one
        # way to create a user is accounts.services.user_create (a wallet with every
        # user), and services import this module. Looked up by name when called, so
        # models never import services (no import cycle).
        user_create = import_string("accounts.services.user_create")
        return user_create(email=email, password=password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra) -> "User":
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    class Kind(models.TextChoices):
        """A person logs in and holds API keys; an organization's account
        (organizations.models) holds its wallet and keys and never logs in."""

        PERSON = "person"
        ORGANIZATION = "organization"

    email = models.EmailField(unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PERSON, db_default=Kind.PERSON)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    # The account-wide spending cap (billing.limits): at most this many credits spent
    # or held per window, over all the account's keys. Null: no cap.
    spend_cap_credits = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    spend_cap_window = models.CharField(max_length=8, choices=SpendWindow.choices, null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(spend_cap_credits__isnull=True) | Q(spend_cap_credits__gte=0),
                name="accounts_user_spend_cap_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.email

    @property
    def is_organization(self) -> bool:
        return self.kind == self.Kind.ORGANIZATION


class ApiKey(models.Model):
    # The account whose wallet the key spends: a person's, or an organization's.
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    # An organization's key: the member who made it (its turns are attributed to them
    # and count against their member budget). Null for a personal key.
    membership = models.ForeignKey(
        "organizations.Membership", on_delete=models.PROTECT, null=True, blank=True, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="Visible start of the key, to tell keys apart.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Optional limits (billing.limits enforces them; null: none). The budget counts
    # credits spent or held per window (null window: lifetime).
    budget_credits = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    budget_window = models.CharField(max_length=8, choices=SpendWindow.choices, null=True, blank=True)
    # The budget of EACH end user the key's requests name (EndUser), per window (null:
    # lifetime); an end user's own override wins. Null: end users are not limited.
    end_user_budget_credits = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True, validators=[MinValueValidator(0)],
        help_text="Credits each end user of this key may spend or hold per window (null: no end-user budget).",
    )  # fmt: skip
    end_user_budget_window = models.CharField(max_length=8, choices=SpendWindow.choices, null=True, blank=True)
    rpm = models.PositiveIntegerField(
        "requests per minute (rpm)", null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Turns or completions accepted per UTC minute.",
    )  # fmt: skip
    tpm = models.PositiveIntegerField(
        "tokens per minute (tpm)", null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Tokens accepted per UTC minute (each request's prompt estimate plus its most output).",
    )  # fmt: skip
    expires_at = models.DateTimeField(null=True, blank=True)
    scopes = models.JSONField(
        default=default_scopes,
        help_text='Any of "chat" (/api/v1), "openai" (/v1) and "keys" (key limits and scopes, the account cap, '
        "cards, auto top-up).",
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="accounts_apikey_user_created")]
        constraints = [
            models.CheckConstraint(
                condition=Q(budget_credits__isnull=True) | Q(budget_credits__gte=0),
                name="accounts_apikey_budget_not_negative",
            ),
            models.CheckConstraint(condition=~Q(rpm=0) & ~Q(tpm=0), name="accounts_apikey_rates_positive"),
            models.CheckConstraint(
                condition=Q(end_user_budget_credits__isnull=True) | Q(end_user_budget_credits__gte=0),
                name="accounts_apikey_end_user_budget_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def is_expired(self, now=None) -> bool:  # noqa: ANN001
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def has_rate_limits(self) -> bool:
        return self.rpm is not None or self.tpm is not None


class EndUser(models.Model):
    """A person a key's requests speak for: a front end's user (Open WebUI's
    `X-OpenWebUI-User-Id`, the OpenAI `user` field), named by the client, never
    logged in here. One row per (key, the client's id), made on first use. The key's
    `end_user_budget_*` applies to each end user separately (billing.limits); the
    owner may override one end user's budget or block them."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="end_users")
    external_id = models.CharField(max_length=256, help_text="The id the client sends for this person.")
    created_at = models.DateTimeField(auto_now_add=True)
    # The owner's override (null: the key's end-user budget applies).
    budget_credits = models.DecimalField(
        max_digits=18, decimal_places=8, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    budget_window = models.CharField(max_length=8, choices=SpendWindow.choices, null=True, blank=True)
    blocked = models.BooleanField(default=False)

    class Meta:
        verbose_name = "end user"
        ordering = ["api_key", "external_id"]
        constraints = [
            models.UniqueConstraint(fields=["api_key", "external_id"], name="accounts_enduser_key_external_unique"),
            models.CheckConstraint(
                condition=Q(budget_credits__isnull=True) | Q(budget_credits__gte=0),
                name="accounts_enduser_budget_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.external_id

    @property
    def has_override(self) -> bool:
        return self.budget_credits is not None
