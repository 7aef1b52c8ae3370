"""The Django admin as Parley's staff console: its own title, an index that opens on
the dashboard's figures (core.dashboard), and below them the admin's sections grouped
by what staff do (users and keys, wallets and ledger, prices, upstreams, chat, usage) instead of
Django's alphabetical list of apps, where dj-stripe's 40-odd models sat between Chat
and Reporting. dj-stripe's models form one last section, shown only when Stripe is
on (billing.stripe.client.stripe_enabled: a secret key is set); their pages stay reachable by URL either way.

Every `@admin.register` in the project lands here: core.admin_apps makes this class
the default site (django.contrib.admin's `default_site`)."""

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse

from billing.stripe.client import stripe_enabled
from core.dashboard import dashboard_cards

# (section label, title, models as "app_label.ModelName" in display order, URL of the
# section heading as a URL name and its arguments). A model not named here (a new
# admin page) is not lost: it is added to its app's section, or to "Other".
SECTIONS: list[tuple[str, str, list[str], str, dict]] = [
    (
        "parley-users",
        "Users and API keys",
        [
            "accounts.User", "organizations.Organization", "organizations.Membership", "organizations.Invitation",
            "accounts.ApiKey", "auth.Group", "notifications.Notification",
        ],  # fmt: skip
        "admin:app_list",
        {"app_label": "accounts"},
    ),
    (
        "parley-wallets",
        "Wallets and ledger",
        ["billing.Wallet", "billing.CreditTransaction", "billing.CreditHold", "billing.TopUp"],
        "admin:app_list",
        {"app_label": "billing"},
    ),
    ("parley-prices", "Model prices", ["billing.ModelPrice"], "admin:billing_modelprice_changelist", {}),
    (
        "parley-routing",
        "Upstreams and routing",
        ["routing.Upstream", "routing.Deployment"],
        "admin:app_list",
        {"app_label": "routing"},
    ),
    (
        "parley-chat",
        "Chat",
        ["chat.ChatSession", "chat.Turn", "chat.LLMCall", "chat.ToolCall"],
        "admin:app_list",
        {"app_label": "chat"},
    ),
    ("parley-usage", "Usage", ["reporting.Usage"], "admin:app_list", {"app_label": "reporting"}),
]
# Apps whose unlisted models join a section above (by its label).
APP_SECTIONS = {
    "accounts": "parley-users",
    "auth": "parley-users",
    "organizations": "parley-users",
    "notifications": "parley-users",
    "billing": "parley-wallets",
    "routing": "parley-routing",
    "chat": "parley-chat",
    "reporting": "parley-usage",
}
STRIPE_APP = "djstripe"
# The index's "Go to" box, top right beside the sections: what staff open most, in
# view without scrolling even when the sections run below the fold. Each appears
# only for staff who may open it (it must be in their app list).
SHORTCUTS = [
    ("reporting.Usage", "Usage summary"),
    ("billing.Wallet", "Wallets (grant credits)"),
    ("billing.CreditTransaction", "Ledger"),
    ("billing.ModelPrice", "Model prices"),
    ("chat.Turn", "Turns"),
]


class ParleyAdminSite(admin.AdminSite):
    site_header = "Parley staff console"
    site_title = "Parley staff console"
    index_title = "Staff console"
    site_url = "/"
    # No app list down the left of every page: it took 300 px of a 1280 px screen from
    # the lists; the index (the dashboard, then the sections) is one click away.
    enable_nav_sidebar = False

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> TemplateResponse:
        urls = {
            f"{app['app_label']}.{model['object_name']}": model["admin_url"]
            for app in super().get_app_list(request)
            for model in app["models"]
            if model.get("admin_url")
        }
        shortcuts = [{"name": name, "url": urls[model]} for model, name in SHORTCUTS if model in urls]
        context = {"shortcuts": shortcuts, "dashboard": dashboard_cards(request)}
        return super().index(request, {**context, **(extra_context or {})})

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        # One app's own page (/admin/billing/) keeps Django's view of that app.
        if app_label is not None:
            return super().get_app_list(request, app_label)
        apps = super().get_app_list(request)
        models = {f"{app['app_label']}.{model['object_name']}": model for app in apps for model in app["models"]}
        sections: dict[str, dict] = {}
        for label, title, names, url_name, url_args in SECTIONS:
            sections[label] = {
                "name": title,
                "app_label": label,
                "app_url": reverse(url_name, kwargs=url_args, current_app=self.name),
                "has_module_perms": True,
                "models": [models.pop(name) for name in names if name in models],
            }
        stripe, other = None, []
        for app in apps:
            rest = [model for model in app["models"] if f"{app['app_label']}.{model['object_name']}" in models]
            if app["app_label"] == STRIPE_APP:
                stripe = {**app, "name": "Stripe (dj-stripe)", "models": rest}
            elif app["app_label"] in APP_SECTIONS:
                sections[APP_SECTIONS[app["app_label"]]]["models"].extend(rest)
            elif rest:
                other.append({**app, "models": rest})
        # A staff member without the permissions of a section does not see it.
        listed = [section for section in sections.values() if section["models"]]
        listed.extend(other)
        if stripe and stripe["models"] and stripe_enabled():
            listed.append(stripe)
        return listed
