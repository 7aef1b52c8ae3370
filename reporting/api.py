"""Usage endpoints (docs/usage-and-console.md): thin views over reporting.selectors.

Who sees what: users/me/usage is the caller's own account's usage (a person's:
personal turns only; an organization's key: its member's turns). orgs/{org_id}/usage
is the organization's: everything to its owners and admins, their own turns to
members."""

from types import SimpleNamespace

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import PermissionDenied
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import ApiKey
from accounts.permissions import USAGE_VIEW, StaffPermissions
from core.exceptions import field_error
from organizations.models import MANAGERS
from organizations.permissions import RoleRequired
from organizations.selectors import membership_for
from reporting.export import usage_csv_response
from reporting.selectors import usage_summary
from reporting.serializers import (
    AdminUsageQuerySerializer,
    OrgUsageQuerySerializer,
    UsageQuerySerializer,
    UsageSummarySerializer,
)


class FormatIsAQueryParameter(DefaultContentNegotiation):
    """Here `?format=` is the endpoint's own parameter (json or csv), validated like the
    others, not DRF's renderer switch (which would answer 404 to `format=csv`)."""

    settings = SimpleNamespace(URL_FORMAT_OVERRIDE=None)


SUMMARY_RESPONSES = {
    (200, "application/json"): UsageSummarySerializer,
    (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="format=csv: the summary as a CSV attachment."),
}


class _UsageView(APIView):
    content_negotiation_class = FormatIsAQueryParameter
    query_serializer_class: type[UsageQuerySerializer] = UsageQuerySerializer

    def query(self, request: Request, **context: object) -> dict:
        query = self.query_serializer_class(data=request.query_params, context=context)
        query.is_valid(raise_exception=True)
        return dict(query.validated_data)

    def summary_response(self, request: Request, params: dict | None = None, **scope: int) -> Response | HttpResponse:
        params = dict(self.query(request) if params is None else params)
        answer_format = params.pop("format")
        summary = usage_summary(**{**params, **scope})
        if answer_format == "csv":
            return usage_csv_response(summary)
        return Response(UsageSummarySerializer(summary).data)


class AdminUsageSummaryView(_UsageView):
    permission_classes = [StaffPermissions]
    staff_permissions = USAGE_VIEW
    query_serializer_class = AdminUsageQuerySerializer

    @extend_schema(parameters=[AdminUsageQuerySerializer], responses=SUMMARY_RESPONSES)
    def get(self, request: Request) -> Response | HttpResponse:
        return self.summary_response(request)


class MyUsageView(_UsageView):
    @extend_schema(parameters=[UsageQuerySerializer], responses=SUMMARY_RESPONSES)
    def get(self, request: Request) -> Response | HttpResponse:
        for name in ("user_id", "organization", "member"):
            if name in request.query_params:
                # Silently ignoring it would let a user believe they see someone else's usage.
                raise field_error(
                    name, "Not allowed here: users/me/usage is always your own usage (an organization's: "
                    "GET orgs/{org_id}/usage).",
                )  # fmt: skip
        scope = {"user_id": request.user.pk}
        if request.user.is_organization:
            # An organization's key reads what its member may: their own turns through the
            # organization's keys, not the other members'.
            api_key = request.auth if isinstance(request.auth, ApiKey) else None
            scope["member_id"] = (api_key.membership_id if api_key else None) or 0
        return self.summary_response(request, **scope)


class OrgUsageView(_UsageView):
    query_serializer_class = OrgUsageQuerySerializer

    @extend_schema(
        parameters=[OrgUsageQuerySerializer],
        responses=SUMMARY_RESPONSES,
        description="The organization's usage: all of it to its owners and admins (who may filter by `member`), "
        "only their own turns through its keys to members. 404 to non-members; 403 to an organization's key.",
    )
    def get(self, request: Request, org_id: int) -> Response | HttpResponse:
        if request.user.is_organization:
            raise PermissionDenied("An organization's key cannot read organization usage; use your personal key.")
        membership = membership_for(user=request.user, organization_id=org_id)
        params = self.query(request, organization=membership.organization)
        if not membership.manages:
            if params.get("member_id", membership.pk) != membership.pk:
                raise RoleRequired(organization=membership.organization, needed=MANAGERS, role=membership.role)
            params["member_id"] = membership.pk
        return self.summary_response(request, params, organization_id=org_id)
