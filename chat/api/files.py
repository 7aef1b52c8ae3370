"""Uploads API (`files`): thin views over chat.services.files."""

import django_filters
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import selectors
from chat.api.serializers import FileUploadSerializer, UploadedFileSerializer
from chat.models import ChatSession, UploadedFile
from chat.services.files import file_create, file_delete
from core.exceptions import field_error
from core.pagination import BIGINT_MAX

# Room for the multipart boundaries, part headers and the `session` field.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _session_for_upload(request: Request, session_id: int) -> ChatSession:
    """The caller's session named in an upload; someone else's reads as missing (400 `session`)."""
    session = selectors.session_get(user=request.user, session_id=session_id)
    if session is None:
        raise field_error("session", "No such session.")
    return session


class FileFilter(django_filters.FilterSet):
    # A plain number, not a model choice: validating it against all sessions would tell
    # a caller which ids exist among other users' sessions.
    session = django_filters.NumberFilter(field_name="session_id", min_value=1, max_value=BIGINT_MAX)

    class Meta:
        model = UploadedFile
        fields = ["session"]


class FileListCreateView(generics.ListAPIView):
    serializer_class = UploadedFileSerializer
    filterset_class = FileFilter
    parser_classes = [MultiPartParser, FormParser]
    queryset = UploadedFile.objects.none()  # for the schema; requests use get_queryset

    def get_queryset(self):  # noqa: ANN201
        return selectors.files_for_user(user=self.request.user)

    @extend_schema(
        request={"multipart/form-data": FileUploadSerializer},
        responses={201: UploadedFileSerializer},
    )
    def post(self, request: Request) -> Response:
        # Refuse an oversized body before Django spools it to disk. The checks in
        # chat.services.files stay the rule; this only spares the server the transfer.
        try:
            declared_length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared_length = 0
        if declared_length > settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
            raise field_error("file", f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes.")
        serializer = FileUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        session_id = data.get("session")
        session = _session_for_upload(request, session_id) if session_id else None
        upload = data["file"]
        # Read one byte past the limit: enough to tell "too large" without trusting `size`.
        raw = upload.read(settings.MAX_UPLOAD_BYTES + 1)
        stored = file_create(
            owner=request.user, name=upload.name, declared_type=upload.content_type, data=raw, session=session
        )
        return Response(UploadedFileSerializer(stored).data, status=status.HTTP_201_CREATED)


class FileDetailView(APIView):
    def _get(self, request: Request, file_id: int) -> UploadedFile:
        stored = selectors.file_get_for_user(user=request.user, file_id=file_id)
        if stored is None:
            raise NotFound()
        return stored

    @extend_schema(responses={200: UploadedFileSerializer})
    def get(self, request: Request, file_id: int) -> Response:
        return Response(UploadedFileSerializer(self._get(request, file_id)).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request, file_id: int) -> Response:
        file_delete(file=self._get(request, file_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
