"""The staff console's pages for upstreams and deployments (issue 27).

An upstream's key never passes through here: the row holds the NAME of the
environment variable, and the pages say only whether that variable is set
(routing.selectors.upstream_key_set). The upstream list shows each one's state
(its cooldown and last error, routing.cooldown: one cache round trip for the page)
and its last 24 hours of calls (routing.selectors.upstream_usage: one grouped query
for the page, whatever its length). Saving a row makes every process read the routes
again (routing.signals)."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_list import _boolean_icon
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from billing.money import format_price, format_usage
from billing.selectors import model_price_for_alias
from chat.llm import DEFAULT_HOSTS
from routing.cooldown import UpstreamState, cooldown_clear, states
from routing.models import Deployment, Upstream
from routing.selectors import UpstreamUsage, upstream_key_set, upstream_usage, upstreams_all

USAGE_WINDOW = timedelta(hours=24)
KEY_HELP = (
    "The NAME of the environment variable holding this upstream's key, e.g. OPENROUTER_API_KEY. The key "
    "itself lives in the server's environment: it is never stored here nor shown. Empty: no key."
)
# Request headers that carry a key: one belongs in the environment, never in the database.
NONE = "—"


def _price(value: Decimal | None) -> str:
    """A price as entered (0.15, not 0.15000000): every place it has, none it has not."""
    if value is None:
        return NONE
    return format_price(value)


def _margin(value: Decimal | None) -> str:
    if value is None:
        return NONE
    if value < 0:  # the upstream costs more than the users pay: shown in red
        return format_html('<span class="upstream-loss">{}</span>', format_usage(value))
    return format_usage(value)


def _utc(timestamp: float, fmt: str = "%H:%M:%S") -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime(fmt) + " UTC"


class UpstreamForm(forms.ModelForm):
    """The model's own checks (its validators: the variable name's pattern, an
    http(s) URL, a positive timeout and limit, headers without a key)."""

    class Meta:
        model = Upstream
        fields = [
            "name", "kind", "base_url", "active", "api_key_env", "timeout_seconds", "max_retries",
            "max_concurrent", "headers",
        ]  # fmt: skip
        labels = {
            "base_url": "Base URL",
            "api_key_env": "Key environment variable",
            "timeout_seconds": "Timeout (seconds)",
            "max_concurrent": "Concurrency limit",
        }
        help_texts = {
            "api_key_env": KEY_HELP,
            "headers": 'Extra request headers as a JSON object of strings, e.g. {"HTTP-Referer": '
            '"https://example.com"}. Not for keys: a key lives in the environment variable above.',
        }

    def clean_headers(self) -> dict:
        # An emptied box is no extra headers; the model's validator checks the rest.
        return self.cleaned_data["headers"] or {}


class DeploymentForm(forms.ModelForm):
    class Meta:
        model = Deployment
        fields = [
            "alias", "upstream", "provider_model", "priority", "weight", "cost_input_credits_per_mtok",
            "cost_output_credits_per_mtok", "active",
        ]  # fmt: skip
        labels = {
            "cost_input_credits_per_mtok": "Cost: input",
            "cost_output_credits_per_mtok": "Cost: output",
        }
        help_texts = {
            "alias": "A priced model alias (Model prices): users pay its price whichever deployment serves.",
            "provider_model": "The model's name at this upstream.",
            "priority": "Lower is tried first.",
            "weight": "Shares the calls among deployments of equal priority.",
            "cost_input_credits_per_mtok": "What the upstream charges us, credits per million tokens (for the "
            "margin). Empty: not recorded.",
            "cost_output_credits_per_mtok": "Credits per million tokens. Empty: not recorded.",
        }

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Prices as entered (0.13), not at the column's 8 places (0.13000000).
        for name in ("cost_input_credits_per_mtok", "cost_output_credits_per_mtok"):
            value = self.initial.get(name)
            if isinstance(value, Decimal):
                self.initial[name] = _price(value)

    def clean_alias(self) -> str:
        alias = self.cleaned_data["alias"].strip()
        # A deployment of an alias without a price would never be tried (a call needs its price first).
        if model_price_for_alias(alias=alias) is None:
            raise forms.ValidationError("No model price has this alias: price it first (Model prices).")
        return alias


class DeploymentInline(admin.TabularInline):
    model = Deployment
    form = DeploymentForm
    fields = [
        "alias", "provider_model", "priority", "weight", "cost_input_credits_per_mtok",
        "cost_output_credits_per_mtok", "active",
    ]  # fmt: skip
    ordering = ["alias", "priority", "id"]
    extra = 0
    verbose_name_plural = "Deployments (the aliases this upstream serves)"


class UpstreamChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # The page's rows get their state and usage at once: one cache round trip and
        # one grouped query, whatever the number of rows.
        rows = list(self.result_list)
        found = states([row.name for row in rows])
        usage = upstream_usage(since=timezone.now() - USAGE_WINDOW)
        for row in rows:
            row._console_state = found[row.name]
            row._console_usage = usage.get(row.name, UpstreamUsage())


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    inlines = [DeploymentInline]
    list_display = ["upstream_name", "host", "key", "limits", "active", "state", "usage_calls", "usage_credits"]
    list_display_links = ["upstream_name"]
    search_fields = ["name", "base_url"]
    ordering = ["name"]
    actions = ["end_cooldown"]
    show_facets = admin.ShowFacets.NEVER

    # --- the page's figures, read once per row (UpstreamChangeList) or per page ---

    def get_changelist(self, request: HttpRequest, **kwargs: object) -> type[ChangeList]:
        return UpstreamChangeList

    def _state(self, obj: Upstream) -> UpstreamState:
        if not hasattr(obj, "_console_state"):
            obj._console_state = states([obj.name])[obj.name]
        return obj._console_state

    def _usage(self, obj: Upstream) -> UpstreamUsage:
        if not hasattr(obj, "_console_usage"):
            obj._console_usage = upstream_usage(since=timezone.now() - USAGE_WINDOW).get(obj.name, UpstreamUsage())
        return obj._console_usage

    # --- columns (also the change page's read-only fields) ---

    @admin.display(description="name", ordering="name")
    def upstream_name(self, obj: Upstream) -> str:
        return format_html('{}<br><span class="quiet">{}</span>', obj.name, obj.kind)

    @admin.display(description="base URL", ordering="base_url")
    def host(self, obj: Upstream) -> str:
        if obj.base_url:
            # A narrow column may break a URL after its slashes, never inside a name.
            return mark_safe(re.sub(r"/(?!/)", "/<wbr>", escape(obj.base_url)))  # noqa: S308  escaped
        url_setting = DEFAULT_HOSTS.get(obj.kind, ("", ""))[0]
        return f"default: {url_setting}" if url_setting else "built in"

    @admin.display(description=mark_safe("key<br>(environment variable)"), ordering="api_key_env")  # noqa: S308
    def key(self, obj: Upstream) -> str:
        if not obj.api_key_env:
            return "no key"
        is_set = upstream_key_set(obj)
        return format_html(
            "<code>{}</code><br>{}&nbsp;{}", obj.api_key_env, _boolean_icon(is_set), "set" if is_set else "not set"
        )

    @admin.display(description="key in the environment")
    def key_status(self, obj: Upstream) -> str:
        if not obj.api_key_env:
            return "No key: calls are sent without one."
        if upstream_key_set(obj):
            return format_html("{}&nbsp;set", _boolean_icon(True))
        return format_html(
            "{}&nbsp;not set: the server's environment has no {}; calls on this upstream go without a key.",
            _boolean_icon(False), obj.api_key_env,
        )  # fmt: skip

    @admin.display(description="timeout")
    def timeout(self, obj: Upstream) -> str:
        if obj.timeout_seconds is None:
            return f"{settings.LLM_TIMEOUT_SECONDS:g}s (default)"
        return f"{obj.timeout_seconds:g}s"

    @admin.display(description="concurrency")
    def concurrency(self, obj: Upstream) -> str:
        return "no limit" if obj.max_concurrent is None else f"{obj.max_concurrent} at once"

    @admin.display(description="limits")
    def limits(self, obj: Upstream) -> str:
        # No-break spaces: a narrow column wraps between the phrases, never inside one.
        timeout = f"{self.timeout(obj)} timeout".replace(" (default) timeout", " timeout (default)")
        parts = [timeout.replace(" timeout", "\u00a0timeout"), self.concurrency(obj).replace(" ", "\u00a0")]
        return format_html("{}<br>{}", *parts)

    @admin.display(description="state")
    def state(self, obj: Upstream) -> str:
        state = self._state(obj)
        if state.cooling:
            shown = format_html(
                '<strong class="upstream-cooling">cooling down until {}</strong> ({})',
                _utc(state.cooling_until), state.cooling_reason or "failures",
            )  # fmt: skip
        else:
            shown = mark_safe('<span class="upstream-ok">ok</span>')  # noqa: S308  a constant
        if not state.last_error:
            return shown
        when = _utc(state.last_error_at, "%Y-%m-%d %H:%M:%S") if state.last_error_at else "at an unknown time"
        return format_html(
            '{}<br><span class="quiet upstream-last-error">last error {}: {}</span>',
            shown, when, Truncator(state.last_error).chars(120),
        )  # fmt: skip

    # The change page shows each figure on its own line; the list groups them in two
    # columns (calls, credits), to fit beside the console's sidebar.
    @admin.display(description="calls (24 h)")
    def calls(self, obj: Upstream) -> int:
        return self._usage(obj).calls

    @admin.display(description="failures (24 h)")
    def failures(self, obj: Upstream) -> int:
        return self._usage(obj).failures

    @admin.display(description="charged (24 h)")
    def charged(self, obj: Upstream) -> str:
        return format_usage(self._usage(obj).charged)

    @admin.display(description="upstream cost (24 h)")
    def upstream_cost(self, obj: Upstream) -> str:
        usage = self._usage(obj)
        return format_usage(usage.upstream_cost) if usage.costed_calls else NONE

    @admin.display(description="margin (24 h)")
    def margin(self, obj: Upstream) -> str:
        usage = self._usage(obj)
        answered = usage.calls - usage.failures
        if usage.margin is None or usage.costed_calls >= answered:
            return _margin(usage.margin)
        # Over the calls whose cost was recorded only: the others' cost is unknown.
        return format_html(
            '{}<br><span class="quiet">over {} of {} calls</span>', _margin(usage.margin), usage.costed_calls, answered
        )

    @admin.display(description="calls")
    def usage_calls(self, obj: Upstream) -> str:
        usage = self._usage(obj)
        if not usage.failures:
            return str(usage.calls)
        return format_html('{}<br><span class="upstream-failures">{}\u00a0failed</span>', usage.calls, usage.failures)

    @admin.display(description="credits")
    def usage_credits(self, obj: Upstream) -> str:
        usage = self._usage(obj)
        answered = usage.calls - usage.failures
        note = ""
        if usage.margin is not None and usage.costed_calls < answered:
            # Over the calls whose cost was recorded only: the others' cost is unknown.
            note = format_html(
                '<dd class="quiet upstream-credits-note">over {} of {} calls</dd>', usage.costed_calls, answered
            )
        return format_html(
            '<dl class="upstream-credits"><dt>charged</dt><dd>{}</dd><dt>cost</dt><dd>{}</dd>'
            "<dt>margin</dt><dd>{}</dd>{}</dl>",
            format_usage(usage.charged), self.upstream_cost(obj),
            _margin(usage.margin), note,
        )  # fmt: skip

    # --- the change page ---

    def get_fieldsets(self, request: HttpRequest, obj: Upstream | None = None) -> list:
        fieldsets = [
            (None, {"fields": ["name", "kind", "base_url", "active"]}),
            (
                "Key",
                {
                    "fields": ["api_key_env", *(["key_status"] if obj is not None else [])],
                    "description": "The key lives in the server's environment; this page names its variable and "
                    "says whether it is set, never its value.",
                },
            ),
            ("Limits and headers", {"fields": ["timeout_seconds", "max_retries", "max_concurrent", "headers"]}),
        ]
        if obj is not None:
            fieldsets.append(
                (
                    "State and the last 24 hours",
                    {
                        "fields": ["state", "calls", "failures", "charged", "upstream_cost", "margin"],
                        "description": "Credits. The upstream cost and the margin (charged less cost) count only "
                        "the calls whose upstream cost was recorded (a deployment with cost prices).",
                    },
                )
            )
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Upstream | None = None) -> list[str]:
        return ["key_status", "state", "calls", "failures", "charged", "upstream_cost", "margin"]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # The kinds' defaults without a row still serve the prices naming them
        # (routing.selectors): said above the list, which shows rows only.
        # (The note above the list also says the figures are the last 24 hours'.)
        unsaved = [row.name for row in upstreams_all() if row.pk is None]
        return super().changelist_view(request, {"unsaved_defaults": unsaved, **(extra_context or {})})

    # --- actions ---

    @admin.action(description="End cooldown now", permissions=["change"])
    def end_cooldown(self, request: HttpRequest, queryset: QuerySet) -> None:
        names = list(queryset.values_list("name", flat=True))
        cooling = [name for name, state in states(names).items() if state.cooling]
        for name in names:
            cooldown_clear(name)
        if cooling:
            self.message_user(request, f"Cooldown ended: {', '.join(cooling)}.", messages.SUCCESS)
        else:
            self.message_user(request, "None of these upstreams was cooling down.", messages.INFO)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    form = DeploymentForm
    list_display = [
        "alias", "upstream", "provider_model", "priority", "weight", "cost_input", "cost_output", "active",
    ]  # fmt: skip
    list_select_related = ["upstream"]
    list_filter = ["alias", "upstream", "active"]
    search_fields = ["alias", "provider_model", "upstream__name"]
    ordering = ["alias", "priority", "id"]
    show_facets = admin.ShowFacets.NEVER

    # Two-line headers: the list's headers do not wrap.
    @admin.display(description=mark_safe("cost in<br>/Mtok"), ordering="cost_input_credits_per_mtok")  # noqa: S308
    def cost_input(self, obj: Deployment) -> str:
        return _price(obj.cost_input_credits_per_mtok)

    @admin.display(description=mark_safe("cost out<br>/Mtok"), ordering="cost_output_credits_per_mtok")  # noqa: S308
    def cost_output(self, obj: Deployment) -> str:
        return _price(obj.cost_output_credits_per_mtok)
