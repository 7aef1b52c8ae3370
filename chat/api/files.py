"""Uploads API (`files`): thin views over chat.services.files. Under the ASGI web
process (core.asgi) an upload's text is read by its child process while the event
loop waits: no thread of the pool is held for it, nor while it waits for a place
among the process's UPLOAD_EXTRACT_CONCURRENCY extractions."""

import asyncio
import time
from contextlib import asynccontextmanager
from functools import partial

import django_filters
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.attribution import request_membership_id
from chat import selectors
from chat.api.serializers import FileUploadSerializer, UploadedFileSerializer
from chat.models import ChatSession, UploadedFile
from chat.services.files import (
    PROJECT_ROOT,
    CheckedUpload,
    file_check,
    file_delete,
    file_extract,
    file_extraction_answer,
    file_extraction_busy,
    file_extraction_command,
    file_extraction_slots,
    file_extraction_timed_out,
    file_store,
)
from core.db import db_read
from core.exceptions import ApplicationError, TooManyRequests, error_body, field_error
from core.pagination import BIGINT_MAX

# Room for the multipart boundaries, part headers and the `session` field.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# How often the event loop looks for a free extraction place while an upload waits.
SLOT_POLL_SECONDS = 0.05


def _session_for_upload(request: Request, session_id: int) -> ChatSession:
    """The caller's session named in an upload; someone else's reads as missing (400 `session`)."""
    session = selectors.session_get(
        user=request.user, session_id=session_id, membership_id=request_membership_id(request)
    )
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
        return selectors.files_for_user(user=self.request.user, membership_id=request_membership_id(self.request))

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
        checked = file_check(name=upload.name, declared_type=upload.content_type, data=raw)
        response = Response(status=status.HTTP_201_CREATED)
        if getattr(request, "waits_on_event_loop", False):
            response.finish_on_event_loop = partial(
                _store_after_extraction, response, owner=request.user, upload=checked, session=session,
                membership_id=request_membership_id(request),
            )
        else:  # WSGI (runserver, the test client): this thread waits for the child
            response.data = _store(
                owner=request.user, upload=checked, text=file_extract(upload=checked), session=session,
                membership_id=request_membership_id(request),
            )
        return response


def _store(**kwargs) -> dict:  # noqa: ANN003  file_store's arguments
    return UploadedFileSerializer(file_store(**kwargs)).data


@asynccontextmanager
async def _extraction_slot():  # noqa: ANN202
    """file_extraction_slots' place, waited for on the event loop: polled, since a
    thread's wait would block the loop (a place frees within a child's run anyway)."""
    deadline = time.monotonic() + settings.UPLOAD_EXTRACT_WAIT_SECONDS
    while not file_extraction_slots.try_take():
        if time.monotonic() >= deadline:
            raise file_extraction_busy()
        await asyncio.sleep(SLOT_POLL_SECONDS)
    try:
        yield
    finally:
        file_extraction_slots.give_back()


async def _extract_on_event_loop(upload: CheckedUpload) -> str:
    """chat.services.files.file_extract, waited for on the event loop."""
    async with _extraction_slot():
        return await _run_extraction(upload)


async def _run_extraction(upload: CheckedUpload) -> str:
    child = await asyncio.create_subprocess_exec(
        *file_extraction_command(upload=upload),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            child.communicate(upload.data), timeout=settings.UPLOAD_EXTRACT_TIMEOUT_SECONDS
        )
    except TimeoutError:
        raise file_extraction_timed_out()
    finally:
        if child.returncode is None:  # timed out, or the client went away: the child goes too
            child.kill()
            await child.wait()
    return file_extraction_answer(stdout=stdout, stderr=stderr, returncode=child.returncode)


async def _store_after_extraction(
    response: Response, *, owner, upload: CheckedUpload, session, membership_id: int | None  # noqa: ANN001
) -> Response:
    try:
        text = await _extract_on_event_loop(upload)
        response.data = await db_read(
            _store, owner=owner, upload=upload, text=text, session=session, membership_id=membership_id
        )
    except ApplicationError as exc:  # what the view's exception handler would have answered
        response.status_code = exc.status_code
        response.data = error_body(exc.code, exc.message, exc.fields)
        if isinstance(exc, TooManyRequests):
            response["Retry-After"] = str(exc.retry_after)
    response.content = response.rendered_content  # rendered in the thread before the wait
    return response


class FileDetailView(APIView):
    def _get(self, request: Request, file_id: int) -> UploadedFile:
        stored = selectors.file_get_for_user(
            user=request.user, file_id=file_id, membership_id=request_membership_id(request)
        )
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
