"""The staff usage page in the Django admin (/admin/reporting/usage/): the same
filters, figures and CSV as GET /api/v1/admin/usage/summary, with a bar chart of
credits per bucket. Read-only; it registers a proxy of UsageDaily so it sits in the
admin index and has its own view permission (reporting.view_usage)."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse

from accounts.models import User
from organizations.models import Membership, Organization
from reporting.chart import credits_chart
from reporting.export import usage_csv_response
from reporting.forms import UsageFilterForm
from reporting.models import Usage
from reporting.selectors import usage_summary


def _query(params: QueryDict, **changes: object) -> str:
    """The current filters with some changed (None removes one), as `?...`."""
    query = params.copy()
    for name, value in changes.items():
        query.pop(name, None)
        if value is not None:
            query[name] = str(value)
    return f"?{query.urlencode()}" if query else "?"


# The page's names of chat.ChatSession.Source.
SOURCE_LABELS = {"chat": "Chat API", "openai": "OpenAI endpoint (/v1)", "embeddings": "Embeddings (/v1/embeddings)"}


def _row(row: dict, label: object, *, url: str | None = None, note: str = "", quiet: bool = False) -> dict:
    """A breakdown row as the page shows it: its first cell (a link to the page filtered
    by it, or plain) and its figures."""
    return {**row, "label": label, "filter_url": url, "note": note, "quiet": quiet}


def _breakdowns(params: QueryDict, summary: dict) -> list[dict]:
    """The summary's tables, in the page's order, each row with its first cell."""
    return [
        {"title": "By model", "id": "usage-by-model", "key": "Model alias", "rows": [
            _row(r, r["model_alias"], url=_query(params, model_alias=r["model_alias"])) for r in summary["by_model"]
        ]},
        {"title": "By user", "id": "usage-by-user", "key": "User", "rows": [
            _row(r, r["email"], url=_query(params, user=r["email"], user_id=None), note=f"(id {r['user_id']})")
            for r in summary["by_user"]
        ]},
        {"title": "By organization", "id": "usage-by-organization", "key": "Organization", "rows": [
            _row(r, r["name"], url=_query(params, organization=r["slug"]), note=f"({r['slug']})")
            if r["organization_id"] else _row(r, "personal accounts", quiet=True)
            for r in summary["by_organization"]
        ]},
        {"title": "By member", "id": "usage-by-member", "key": "Member", "rows": [
            _row(r, r["email"], url=_query(params, member=r["membership_id"]), note=f"({r['organization_name']})")
            if r["membership_id"] else _row(r, "no member (personal)", url=_query(params, member=0))
            for r in summary["by_member"]
        ]},
        {"title": "By source", "id": "usage-by-source", "key": "Source", "rows": [
            _row(r, SOURCE_LABELS.get(r["source"], r["source"]), url=_query(params, source=r["source"]))
            for r in summary["by_source"]
        ]},
        {"title": "By end user", "id": "usage-by-end-user", "key": "End user", "rows": [
            _row(r, r["external_id"], url=_query(params, end_user=r["end_user_id"]), note=f"({r['api_key_name']})")
            if r["end_user_id"] else _row(r, "none named", quiet=True)
            for r in summary["by_end_user"]
        ]},
        {"title": "By purpose", "id": "usage-by-purpose", "key": "Purpose", "rows": [
            _row(r, r["purpose"], url=_query(params, purpose=r["purpose"])) if r["purpose"]
            else _row(r, "unlabelled", quiet=True)
            for r in summary["by_purpose"]
        ]},
        {"title": f"By {summary['bucket']}", "id": "usage-by-bucket", "key": f"{summary['bucket'].title()} starting",
         "rows": [_row(r, r["bucket"].isoformat()) for r in summary["by_bucket"]]},
    ]  # fmt: skip


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Usage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Usage | None = None) -> bool:
        return False

    def get_urls(self) -> list:
        # Only the summary page: rollup rows are not edited or browsed one by one.
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.summary_view), name=name)]

    def summary_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        params = request.GET.copy()
        params.pop("format", None)
        if params.get("user_id") and not params.get("user"):
            # The wallet page links with ?user_id=; the form's field is `user` (email or id).
            params["user"] = params.pop("user_id")[-1]
        form = UsageFilterForm(params)
        context = {
            **self.admin_site.each_context(request),
            "title": "Usage summary",
            "opts": self.opts,
            "form": form,
        }
        if form.is_valid():
            summary = usage_summary(**form.filters())
            if request.GET.get("format") == "csv":
                return usage_csv_response(summary)
            context.update(self._summary_context(params, summary))
        return TemplateResponse(request, "admin/reporting/usage_summary.html", context)

    def _summary_context(self, params: QueryDict, summary: dict) -> dict:
        user = User.objects.filter(pk=summary["user_id"]).first() if summary["user_id"] else None
        end_user = next((r for r in summary["by_end_user"] if r["end_user_id"] == summary["end_user_id"]), None)
        try:
            user_url = reverse("admin:accounts_user_change", args=[user.pk]) if user else None
        except NoReverseMatch:
            user_url = None
        return {
            "summary": summary,
            "breakdowns": _breakdowns(params, summary),
            "source_label": SOURCE_LABELS.get(summary["source"], summary["source"]),
            "chart": credits_chart(summary["by_bucket"], summary["bucket"]),
            "csv_url": _query(params, format="csv"),
            "filtered_user": user,
            "filtered_user_url": user_url,
            "clear_user_url": _query(params, user=None, user_id=None),
            "clear_model_url": _query(params, model_alias=None),
            "clear_source_url": _query(params, source=None),
            "filtered_end_user": end_user,
            "clear_end_user_url": _query(params, end_user=None),
            "clear_purpose_url": _query(params, purpose=None),
            "filtered_organization": (
                Organization.objects.filter(pk=summary["organization_id"]).first() if summary["organization_id"] else None
            ),
            "filtered_member": (
                Membership.objects.select_related("user", "organization").filter(pk=summary["member_id"]).first()
                if summary["member_id"] else None
            ),
            "clear_organization_url": _query(params, organization=None),
            "clear_member_url": _query(params, member=None),
        }
