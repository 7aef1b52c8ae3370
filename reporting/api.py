"""Usage endpoints (docs/usage-and-console.md): thin views over reporting.selectors."""

from types import SimpleNamespace

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import USAGE_VIEW, StaffPermissions
from core.exceptions import field_error
from reporting.export import usage_csv_response
from reporting.selectors import usage_summary
from reporting.serializers import AdminUsageQuerySerializer, UsageQuerySerializer, UsageSummarySerializer


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

    def summary_response(self, request: Request, **scope: int) -> Response | HttpResponse:
        query = self.query_serializer_class(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = dict(query.validated_data)
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
        if "user_id" in request.query_params:
            # Silently ignoring it would let a user believe they see someone else's usage.
            raise field_error("user_id", "Not allowed here: users/me/usage is always your own usage.")
        return self.summary_response(request, user_id=request.user.pk)
