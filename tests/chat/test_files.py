import asyncio
import hashlib
import io
import json
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pypdf import PdfReader, PdfWriter

from accounts.services import api_key_create
from chat.engine.context import files_prompt_note
from chat.models import UploadedFile
from chat.services.files import file_create
from core.exceptions import ApplicationError
from tests.chat.pdf import make_pdf, make_pdf_bomb

pytestmark = pytest.mark.django_db

URL = "/api/v1/files"


def upload(client, name: str, data: bytes, content_type: str, **extra):  # noqa: ANN001, ANN201
    return client.post(
        URL, {"file": SimpleUploadedFile(name, data, content_type=content_type), **extra}, format="multipart"
    )


def assert_refused(response, fragment: str, field: str = "file") -> None:  # noqa: ANN001
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == [field]
    assert fragment in error["fields"][field][0]
    assert UploadedFile.objects.count() == 0


# --- accepted uploads --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type", "data", "stored_type"),
    [
        ("notes.txt", "text/plain", b"plain words\nsecond line\n", "text/plain"),
        ("README.md", "text/markdown", "# Title\n\nCaf\u00e9 cr\u00e8me".encode(), "text/markdown"),
        ("README.md", "text/plain", b"# Title as text/plain", "text/markdown"),
        ("table.csv", "text/csv", b"a,b\n1,2\n", "text/csv"),
        ("table.csv", "application/vnd.ms-excel", b"a,b\n1,2\n", "text/csv"),
        ("data.json", "application/json", b'{"k": [1, 2, 3]}', "application/json"),
        ("data.json", "application/octet-stream", b'{"k": 1}', "application/json"),
        ("noext", "text/csv", b"x,y\n", "text/csv"),
    ],
)
def test_text_like_upload_is_stored_with_its_sha256_and_text(
    owner_client, owner, name, content_type, data, stored_type
):
    response = upload(owner_client, name, data, content_type)

    assert response.status_code == 201, response.content
    body = response.json()
    stored = UploadedFile.objects.get()
    assert body == {
        "id": stored.id,
        "name": name,
        "content_type": stored_type,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "session": None,
        "created_at": body["created_at"],
    }
    assert stored.owner == owner
    assert stored.extracted_text == data.decode("utf-8")


def test_utf8_byte_order_mark_is_not_part_of_the_text(owner_client):
    data = "\ufeffhello".encode()
    assert upload(owner_client, "bom.txt", data, "text/plain").status_code == 201
    stored = UploadedFile.objects.get()
    assert stored.extracted_text == "hello"
    assert stored.sha256 == hashlib.sha256(data).hexdigest()


def test_pdf_text_is_extracted_with_pypdf(owner_client):
    data = make_pdf([["Quarterly report", "Revenue grew (a lot)"], ["Second page: 42 widgets"]])
    response = upload(owner_client, "report.pdf", data, "application/pdf")

    assert response.status_code == 201, response.content
    assert response.json()["content_type"] == "application/pdf"
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    text = UploadedFile.objects.get().extracted_text
    assert "Quarterly report\nRevenue grew (a lot)" in text
    assert "Second page: 42 widgets" in text
    assert text.index("Quarterly") < text.index("Second page")


def test_pdf_protected_only_by_an_owner_password_is_readable(owner_client):
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["Open to read"]]))))
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    assert upload(owner_client, "open.pdf", out.getvalue(), "application/pdf").status_code == 201
    assert "Open to read" in UploadedFile.objects.get().extracted_text


def test_upload_can_be_attached_to_the_callers_session(owner_client, panel_session):
    response = upload(owner_client, "a.txt", b"attached", "text/plain", session=panel_session.id)
    assert response.status_code == 201
    assert response.json()["session"] == panel_session.id
    assert UploadedFile.objects.get().session == panel_session


def test_file_of_exactly_the_size_limit_is_accepted(owner_client, settings):
    settings.MAX_UPLOAD_BYTES = 64
    assert upload(owner_client, "edge.txt", b"x" * 64, "text/plain").status_code == 201


# --- refused uploads: 400 naming `file` (or `session`), nothing stored --------------


def test_file_over_the_size_limit_is_refused(owner_client, settings):
    settings.MAX_UPLOAD_BYTES = 64
    assert_refused(upload(owner_client, "big.txt", b"x" * 65, "text/plain"), "larger than the limit of 64 bytes")


# --- bounded extraction: pages, inflated bytes, time, memory ---------------------------


@pytest.mark.parametrize("pages", [600, 40])
def test_a_pdf_bomb_is_refused_in_under_two_seconds(owner_client, pages):
    # ~165 KB (600 pages) / ~75 KB (40 pages): every page's content is ONE Flate stream
    # inflating to 70 MB of blanks. Before the bounds this took pypdf ~0.25 s a page.
    data = make_pdf_bomb(pages=pages)
    assert len(data) < 200_000

    started = time.monotonic()
    response = upload(owner_client, "bomb.pdf", data, "application/pdf")
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, elapsed
    fragment = "600 pages; at most 500 are read" if pages == 600 else "inflates to more than 32 MiB"
    assert_refused(response, fragment)


def test_a_pdf_over_the_page_limit_is_refused(owner_client, settings):
    settings.PDF_MAX_PAGES = 2
    assert upload(owner_client, "two.pdf", make_pdf([["one"], ["two"]]), "application/pdf").status_code == 201
    assert_refused_after_one = upload(owner_client, "three.pdf", make_pdf([["1"], ["2"], ["3"]]), "application/pdf")
    assert assert_refused_after_one.status_code == 400
    assert "has 3 pages; at most 2 are read" in assert_refused_after_one.json()["error"]["fields"]["file"][0]
    assert UploadedFile.objects.count() == 1


def test_pages_sharing_one_stream_count_it_once_each(owner_client, settings):
    # 1 MiB of page content, shared by 5 pages: 5 MiB to parse, over a 4 MiB budget.
    settings.PDF_MAX_DECODED_BYTES = 4 * 1024 * 1024
    bomb = make_pdf_bomb(pages=5, decoded_bytes=1024 * 1024)
    assert_refused(upload(owner_client, "shared.pdf", bomb, "application/pdf"), "inflates to more than 4 MiB")
    fits = make_pdf_bomb(pages=3, decoded_bytes=1024 * 1024)
    response = upload(owner_client, "fits.pdf", fits, "application/pdf")
    assert response.status_code == 201, response.content
    assert UploadedFile.objects.get().extracted_text.strip() == ""  # blank pages: no text, and stored


def test_extraction_past_the_time_limit_is_refused_and_stores_nothing(owner_client, settings):
    settings.UPLOAD_EXTRACT_TIMEOUT_SECONDS = 0.01  # less than the child process needs to start
    started = time.monotonic()
    response = upload(owner_client, "report.pdf", make_pdf([["Quarterly report"]]), "application/pdf")
    assert time.monotonic() - started < 2.0
    assert_refused(response, "took longer than 0.01 s, the limit")


def test_extraction_past_the_memory_limit_is_refused(owner_client, settings):
    settings.UPLOAD_EXTRACT_MEMORY_MB = 64
    data = make_pdf_bomb(pages=1, decoded_bytes=30 * 1024 * 1024)  # inflating it needs more than 64 MiB
    response = upload(owner_client, "big.pdf", data, "application/pdf")
    assert response.status_code == 400
    message = response.json()["error"]["fields"]["file"][0]
    assert "memory" in message or "within the limits" in message, message
    assert UploadedFile.objects.count() == 0


def test_text_is_extracted_outside_the_web_process(owner_client, monkeypatch):
    # The child's answer is what gets stored: with the child's module swapped for
    # one that answers differently, the stored text follows it.
    import chat.extraction

    assert upload(owner_client, "a.txt", b"from the child", "text/plain").status_code == 201
    monkeypatch.setattr(chat.extraction, "decode_text", lambda data, content_type: "from this process")
    assert upload(owner_client, "b.txt", b"from the child", "text/plain").status_code == 201
    assert set(UploadedFile.objects.values_list("extracted_text", flat=True)) == {"from the child"}


def test_oversized_body_is_refused_before_it_is_parsed(owner_client, settings):
    settings.MAX_UPLOAD_BYTES = 64
    # Not even valid multipart: only the declared length can have refused it.
    body = b"x" * 200_000
    response = owner_client.generic("POST", URL, body, content_type="multipart/form-data; boundary=nothing")
    assert_refused(response, "larger than the limit of 64 bytes")
    small = owner_client.generic("POST", URL, b"x" * 100, content_type="multipart/form-data; boundary=nothing")
    assert small.status_code == 400
    assert "larger than" not in small.content.decode()


@pytest.mark.parametrize(
    ("name", "content_type", "data", "fragment"),
    [
        ("picture.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "'.png' are not accepted"),
        ("program.exe", "text/plain", b"MZ text", "'.exe' are not accepted"),
        ("noext", "application/octet-stream", b"bytes", "Content type 'application/octet-stream' is not accepted"),
        ("noext", "image/gif", b"GIF89a", "Content type 'image/gif' is not accepted"),
        ("notes.txt", "application/pdf", b"%PDF-1.4 text", "does not match a '.txt' file"),
        ("report.pdf", "text/plain", b"%PDF-1.4", "does not match a '.pdf' file"),
        ("empty.txt", "text/plain", b"", "empty"),
    ],
)
def test_disallowed_or_mismatched_type_is_refused(owner_client, name, content_type, data, fragment):
    assert_refused(upload(owner_client, name, data, content_type), fragment)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)),  # not UTF-8
        b"valid ascii\x00with a NUL",
        b"mostly text" + b"\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f" * 3,  # control characters
    ],
)
def test_binary_posing_as_text_is_refused(owner_client, data):
    response = upload(owner_client, "sneaky.txt", data, "text/plain")
    assert_refused(response, "text/plain")


def test_pdf_header_on_garbage_is_refused(owner_client):
    assert_refused(
        upload(owner_client, "broken.pdf", b"%PDF-1.4\ngarbage without objects", "application/pdf"), "could not be read"
    )


def test_binary_posing_as_pdf_is_refused(owner_client):
    assert_refused(upload(owner_client, "fake.pdf", b"\x89PNG\r\n\x1a\n....", "application/pdf"), "PDF header")


def test_password_protected_pdf_is_refused(owner_client):
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["Secret"]]))))
    writer.encrypt(user_password="pw", owner_password="own", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    assert_refused(upload(owner_client, "locked.pdf", out.getvalue(), "application/pdf"), "password-protected")


def test_invalid_json_is_refused(owner_client):
    assert_refused(upload(owner_client, "data.json", b'{"k": ', "application/json"), "not valid JSON")


def test_missing_file_field_is_refused(owner_client):
    response = owner_client.post(URL, {"session": ""}, format="multipart")
    assert_refused(response, "No file was submitted")


def test_json_body_instead_of_multipart_is_415(owner_client):
    response = owner_client.post(URL, {"file": "text"}, format="json")
    assert response.status_code == 415
    assert UploadedFile.objects.count() == 0


def test_someone_elses_session_is_refused_like_a_missing_one(owner_client, other_session):
    mine_missing = upload(owner_client, "a.txt", b"x", "text/plain", session=other_session.id + 1000)
    theirs = upload(owner_client, "a.txt", b"x", "text/plain", session=other_session.id)
    assert_refused(theirs, "No such session.", field="session")
    assert mine_missing.json() == theirs.json()


def test_a_deleted_session_cannot_take_uploads(owner_client, panel_session):
    from django.utils import timezone

    type(panel_session).objects.filter(pk=panel_session.pk).update(deleted_at=timezone.now())
    assert_refused(
        upload(owner_client, "a.txt", b"x", "text/plain", session=panel_session.id), "No such session.", "session"
    )


def test_service_refuses_a_session_of_another_owner(owner, other_session):
    with pytest.raises(ApplicationError) as info:
        file_create(owner=owner, name="a.txt", declared_type="text/plain", data=b"x", session=other_session)
    assert info.value.fields == {"session": ["No such session."]}
    assert UploadedFile.objects.count() == 0


def test_path_in_the_name_keeps_only_the_base_name(owner):
    stored = file_create(owner=owner, name="..\\..\\etc/pass\x07wd.txt", declared_type="text/plain", data=b"x")
    assert stored.name == "passwd.txt"


# --- list, detail, delete: owner only -----------------------------------------------


def test_list_shows_only_own_files_newest_first(owner_client, other_client):
    upload(owner_client, "first.txt", b"1", "text/plain")
    upload(owner_client, "second.txt", b"2", "text/plain")
    upload(other_client, "theirs.txt", b"3", "text/plain")

    body = owner_client.get(URL).json()
    assert body["count"] == 2
    assert [item["name"] for item in body["results"]] == ["second.txt", "first.txt"]
    assert set(body["results"][0]) == {"id", "name", "content_type", "size", "sha256", "session", "created_at"}


def test_list_filters_by_session(owner_client, panel_session, other_session):
    upload(owner_client, "loose.txt", b"1", "text/plain")
    upload(owner_client, "attached.txt", b"2", "text/plain", session=panel_session.id)

    assert [f["name"] for f in owner_client.get(URL, {"session": panel_session.id}).json()["results"]] == [
        "attached.txt"
    ]
    assert owner_client.get(URL, {"session": other_session.id}).json()["count"] == 0
    assert owner_client.get(URL, {"session": other_session.id + 1000}).json()["count"] == 0
    response = owner_client.get(URL, {"session": "abc"})
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["session"]


def test_list_is_paginated(owner_client):
    for index in range(3):
        upload(owner_client, f"f{index}.txt", b"x", "text/plain")
    body = owner_client.get(URL, {"page_size": 2}).json()
    assert body["count"] == 3
    assert len(body["results"]) == 2
    assert body["next"] is not None


def test_detail_and_delete_are_owner_only(owner_client, other_client):
    file_id = upload(owner_client, "mine.txt", b"private", "text/plain").json()["id"]

    assert other_client.get(f"{URL}/{file_id}").status_code == 404
    assert other_client.delete(f"{URL}/{file_id}").status_code == 404
    assert UploadedFile.objects.filter(pk=file_id).exists()

    detail = owner_client.get(f"{URL}/{file_id}")
    assert detail.status_code == 200
    assert detail.json()["name"] == "mine.txt"
    assert "extracted_text" not in detail.json()

    assert owner_client.delete(f"{URL}/{file_id}").status_code == 204
    assert not UploadedFile.objects.filter(pk=file_id).exists()
    assert owner_client.get(f"{URL}/{file_id}").status_code == 404


def test_files_need_an_api_key(anon_client):
    assert anon_client.get(URL).status_code == 401
    assert anon_client.post(URL, {"file": SimpleUploadedFile("a.txt", b"x")}, format="multipart").status_code == 401
    assert UploadedFile.objects.count() == 0


def test_unknown_file_id_out_of_bigint_range_is_404(owner_client):
    assert owner_client.get(f"{URL}/{2**70}").status_code == 404


def test_prompt_note_lists_own_files_with_session_files_first(owner, other_user, panel_session):
    older = file_create(owner=owner, name="older.txt", declared_type="text/plain", data=b"a")
    attached = file_create(
        owner=owner, name="attached.md", declared_type="text/markdown", data=b"b", session=panel_session
    )
    file_create(owner=other_user, name="theirs.txt", declared_type="text/plain", data=b"c")

    note = files_prompt_note(user=owner, session=panel_session)
    lines = note.splitlines()
    assert lines[1] == f'- id {attached.id}: "attached.md" (text/markdown, 1 bytes)'
    assert lines[2] == f'- id {older.id}: "older.txt" (text/plain, 1 bytes)'
    assert "theirs" not in note
    assert files_prompt_note(user=other_user).count("- id") == 1


# --- under the ASGI web process: the event loop waits for the child, no thread does ----


def _asgi_upload(app, raw_key: str, name: str, data: bytes):  # noqa: ANN001, ANN201
    from tests.asgi import asgi_call, multipart

    body, content_type = multipart({"file": SimpleUploadedFile(name, data, content_type="application/pdf")})
    return asgi_call(app, "POST", URL, body=body, headers=[content_type, (b"authorization", f"Bearer {raw_key}".encode())])


@pytest.mark.django_db(transaction=True)
def test_under_asgi_a_pdf_is_stored_and_a_bomb_refused_in_under_two_seconds(owner):
    from core.asgi import ASGIHandler

    app = ASGIHandler()
    _, raw_key = api_key_create(user=owner, name="asgi")
    status, _, content = asyncio.run(_asgi_upload(app, raw_key, "report.pdf", make_pdf([["Quarterly report"]])))
    assert status == 201, content
    assert json.loads(content)["name"] == "report.pdf"
    assert "Quarterly report" in UploadedFile.objects.get().extracted_text

    started = time.monotonic()
    status, _, content = asyncio.run(_asgi_upload(app, raw_key, "bomb.pdf", make_pdf_bomb(pages=40)))
    assert time.monotonic() - started < 2.0
    assert status == 400
    assert "inflates to more than 32 MiB" in json.loads(content)["error"]["fields"]["file"][0]
    assert UploadedFile.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_under_asgi_a_slow_extraction_holds_no_thread_of_the_web_process(owner, settings):
    from core.asgi import ASGIHandler
    from tests.asgi import asgi_call

    settings.WEB_THREADS = 1  # one thread for every request: a waiting upload would block the next one
    settings.UPLOAD_EXTRACT_TIMEOUT_SECONDS = 3
    settings.PDF_MAX_DECODED_BYTES = 10**12  # nothing stops the bomb but the time limit
    app = ASGIHandler()
    _, raw_key = api_key_create(user=owner, name="me")

    async def scenario() -> tuple:
        upload = asyncio.create_task(_asgi_upload(app, raw_key, "bomb.pdf", make_pdf_bomb(pages=40)))
        await asyncio.sleep(1.0)  # the child is reading the bomb
        started = time.monotonic()
        me = await asgi_call(app, "GET", "/api/v1/users/me", headers=[(b"authorization", f"Bearer {raw_key}".encode())])
        me_seconds, upload_still_running = time.monotonic() - started, not upload.done()
        return me, me_seconds, upload_still_running, await upload

    me, me_seconds, upload_still_running, (status, _, content) = asyncio.run(scenario())
    assert me[0] == 200 and upload_still_running
    assert me_seconds < 1.0, me_seconds
    assert status == 400
    assert "took longer than 3 s, the limit" in json.loads(content)["error"]["fields"]["file"][0]
    assert not UploadedFile.objects.exists()
