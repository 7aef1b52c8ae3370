"""Uploads cannot burn CPU (issue 29): extraction is bounded by CPU time and by the
count of content-stream operations, besides wall time and memory (tests/chat/
test_files.py), and at most UPLOAD_EXTRACT_CONCURRENCY extractions run at once in a
process; a further upload waits for a place, briefly, then gets 429 with
Retry-After in the shared error body."""

import asyncio
import json
import subprocess
import threading
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pypdf import apply_configuration
from pypdf.errors import LimitReachedError
from pypdf.generic import ContentStream, DecodedStreamObject

import chat.extraction
from accounts.services import api_key_create
from chat.extraction import count_operations, extract_pdf_text
from chat.models import UploadedFile
from chat.services import files as file_services
from chat.services.files import file_check, file_extract, file_extraction_slots
from core.exceptions import ApplicationError, TooManyRequests
from tests.chat.pdf import make_pdf, make_pdf_of_operations

pytestmark = pytest.mark.django_db

URL = "/api/v1/files"


def upload(client, name: str, data: bytes, content_type: str = "application/pdf"):  # noqa: ANN001, ANN201
    return client.post(URL, {"file": SimpleUploadedFile(name, data, content_type=content_type)}, format="multipart")


def refusal(response) -> str:  # noqa: ANN001
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == ["file"]
    return error["fields"]["file"][0]


def checked(name: str, data: bytes, content_type: str = "application/pdf"):  # noqa: ANN201
    return file_check(name=name, declared_type=content_type, data=data)


# --- the count of operations -----------------------------------------------------------


@pytest.mark.parametrize("operation", [b"BT ET\n", b"BT () Tj ET\n", b"q Q\n", b"(x) Tj\n", b"0 "])
def test_nine_megabytes_of_empty_operations_are_refused_in_under_two_seconds(owner_client, operation):
    # 3 pages of 3 MB of page content each, ~15 KB of file: pypdf took 12 s on the
    # `BT ET` one (past the 10 s time limit: every such upload cost the full limit).
    data = make_pdf_of_operations(pages=3, operation=operation, decoded_bytes=9 * 1024 * 1024)
    assert len(data) < 25_000

    started = time.monotonic()
    response = upload(owner_client, "empty.pdf", data)
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, elapsed
    assert "holds more than 500000 operations (operators and operands)" in refusal(response)
    assert not UploadedFile.objects.exists()


def test_a_normal_pdf_still_extracts(owner_client):
    lines = [f"Line {i} of the quarterly report, with numbers 1, 2 and 3" for i in range(40)]
    response = upload(owner_client, "report.pdf", make_pdf([lines, ["Second page"]]))

    assert response.status_code == 201, response.content
    text = UploadedFile.objects.get().extracted_text
    assert "Line 0 of the quarterly report" in text and "Line 39" in text and "Second page" in text


def test_the_operations_bound_counts_every_page_and_is_inclusive(owner_client, settings):
    pdf = make_pdf([["one"], ["two"]])
    # Each page: BT, /F1 12 Tf, 14 TL, 72 720 Td, (one) Tj, T*, ET: 13 operators and operands.
    settings.PDF_MAX_CONTENT_OPERATIONS = 25
    message = refusal(upload(owner_client, "two.pdf", pdf))
    assert message.startswith("The PDF's page content holds more than 25 operations")
    settings.PDF_MAX_CONTENT_OPERATIONS = 26
    assert upload(owner_client, "two.pdf", pdf).status_code == 201


@pytest.mark.parametrize(
    "content",
    [
        b"BT /F1 12 Tf 14 TL 72 720 Td (Hello \\(world\\)) Tj T* ET",
        b"q 1 0 0 1 0 0 cm BT [(H) -20 (ello) 5 <4142>] TJ ET Q",
        b"/OC /MC0 BDC BT (a) ' 1 2 (b) \" ET EMC",
        b"/Span << /ActualText (x) /Lang (en) >> BDC EMC",
        b"BT [[(a)] 1] TJ ET true false null n",
        b"BT (multi\\\nline) Tj ET",
    ],
)
def test_operations_are_counted_as_pypdfs_parse_budget_counts_them(content):
    # The count is what pypdf's budget (stream_parsing_work_maximum_count) allows:
    # parsing with a budget of exactly the count works, one less stops it.
    count = count_operations(content)
    for budget, fits in ((count, True), (count - 1, False)):
        stream = DecodedStreamObject()
        stream.set_data(content)
        try:
            with apply_configuration(stream_parsing_work_maximum_count=budget):
                ContentStream(stream, None, "bytes").operations  # noqa: B018  parses
        except LimitReachedError as exc:
            assert not fits
            assert "tokens" in str(exc)  # what chat.extraction reads to name the bound
        else:
            assert fits


def test_a_long_stream_is_counted_a_piece_at_a_time_and_stops_past_its_bound():
    content = b"BT (one two) Tj ET\n" * 100_000  # 1.9 MB: several pieces
    assert count_operations(content) == 400_000
    assert 1_000 < count_operations(content, stop_above=1_000) < 200_000


def test_pypdfs_parse_budget_stops_a_stream_the_count_missed(monkeypatch):
    # In this process (not the child): with the count made blind, pypdf's own budget,
    # set to the same bound, still refuses, naming the operations.
    monkeypatch.setattr(chat.extraction, "count_operations", lambda content, stop_above=None: 0)
    data = make_pdf_of_operations(pages=1, operation=b"BT ET\n", decoded_bytes=60_000)
    with apply_configuration(), pytest.raises(chat.extraction.Refused, match="holds more than 1000 operations"):
        # (apply_configuration: the limits extract_pdf_text sets end with the block)
        extract_pdf_text(data, max_pages=10, max_decoded_bytes=10**6, max_operations=1_000, max_chars=10_000)


# --- CPU time ------------------------------------------------------------------------------


def test_extraction_past_its_cpu_time_is_refused_naming_the_bound(owner_client, settings):
    settings.UPLOAD_EXTRACT_CPU_SECONDS = 1
    settings.PDF_MAX_CONTENT_OPERATIONS = 10**9  # nothing stops pypdf but the CPU limit
    data = make_pdf_of_operations(pages=3, operation=b"BT () Tj ET\n")

    started = time.monotonic()
    response = upload(owner_client, "busy.pdf", data)
    elapsed = time.monotonic() - started

    assert "needed more than 1 s of CPU time, the limit" in refusal(response)
    assert elapsed < 4.0, elapsed  # the 10 s time limit did not have to step in
    assert not UploadedFile.objects.exists()


def test_a_child_killed_at_its_hard_cpu_limit_is_refused_naming_the_bound(settings):
    from chat.services.files import file_extraction_answer

    settings.UPLOAD_EXTRACT_CPU_SECONDS = 3
    for returncode in (-24, -9):  # SIGXCPU, SIGKILL
        with pytest.raises(ApplicationError) as refused:
            file_extraction_answer(stdout=b"", stderr=b"", returncode=returncode)
        assert "needed more than 3 s of CPU time" in refused.value.fields["file"][0]


# --- at most UPLOAD_EXTRACT_CONCURRENCY at once ---------------------------------------------


@pytest.fixture
def children_counted(monkeypatch):  # noqa: ANN001, ANN201
    """subprocess.run in chat.services.files, counting the children running at once."""
    state = {"running": 0, "most": 0, "runs": 0}
    lock = threading.Lock()
    real_run = subprocess.run

    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with lock:
            state["running"] += 1
            state["runs"] += 1
            state["most"] = max(state["most"], state["running"])
        try:
            return real_run(*args, **kwargs)
        finally:
            with lock:
                state["running"] -= 1

    monkeypatch.setattr(file_services.subprocess, "run", run)
    return state


def slow_upload():  # noqa: ANN201
    """About a second of CPU in the child (stopped by its CPU limit), with the
    operations bound lifted."""
    return checked("slow.pdf", make_pdf_of_operations(pages=3, operation=b"BT () Tj ET\n"))


def test_a_second_extraction_waits_for_the_first_never_running_beside_it(settings, children_counted):
    settings.UPLOAD_EXTRACT_CONCURRENCY = 1
    settings.UPLOAD_EXTRACT_WAIT_SECONDS = 10
    settings.UPLOAD_EXTRACT_CPU_SECONDS = 1
    settings.PDF_MAX_CONTENT_OPERATIONS = 10**9
    answers = {}

    def first() -> None:
        try:
            file_extract(upload=slow_upload())
        except ApplicationError as exc:
            answers["first"] = exc.fields["file"][0]

    thread = threading.Thread(target=first)
    thread.start()
    while file_extraction_slots.taken == 0:
        time.sleep(0.01)
    started = time.monotonic()
    answers["second"] = file_extract(upload=checked("note.txt", b"waited", "text/plain"))
    waited = time.monotonic() - started
    thread.join()

    assert "CPU time" in answers["first"] and answers["second"] == "waited"
    assert children_counted == {"running": 0, "most": 1, "runs": 2}
    assert waited > 0.5, waited  # it waited for the first child
    assert file_extraction_slots.taken == 0


def test_an_extraction_that_finds_no_place_in_time_is_refused_with_429(settings, children_counted):
    settings.UPLOAD_EXTRACT_CONCURRENCY = 1
    settings.UPLOAD_EXTRACT_WAIT_SECONDS = 0.2
    settings.UPLOAD_EXTRACT_CPU_SECONDS = 1
    settings.PDF_MAX_CONTENT_OPERATIONS = 10**9
    refusals = []

    def first() -> None:
        try:
            file_extract(upload=slow_upload())
        except ApplicationError as exc:
            refusals.append(exc.fields["file"][0])

    thread = threading.Thread(target=first)
    thread.start()
    while file_extraction_slots.taken == 0:
        time.sleep(0.01)

    started = time.monotonic()
    with pytest.raises(TooManyRequests) as busy:
        file_extract(upload=checked("note.txt", b"refused", "text/plain"))
    assert 0.2 <= time.monotonic() - started < 1.0
    thread.join()

    assert "CPU time" in refusals[0]
    assert busy.value.retry_after == 1
    assert children_counted["most"] == 1 and children_counted["runs"] == 1
    assert file_extraction_slots.taken == 0


@pytest.fixture
def one_place_taken(settings):  # noqa: ANN001, ANN201
    """The process's only extraction place, held by the test (as a running upload would)."""
    settings.UPLOAD_EXTRACT_CONCURRENCY = 1
    settings.UPLOAD_EXTRACT_WAIT_SECONDS = 0.2
    assert file_extraction_slots.try_take()
    yield
    file_extraction_slots.give_back()


def test_an_upload_without_a_place_answers_429_with_retry_after(owner_client, one_place_taken):
    response = upload(owner_client, "note.txt", b"hello", "text/plain")

    assert response.status_code == 429, response.content
    assert response["Retry-After"] == "5"  # UPLOAD_EXTRACT_CPU_SECONDS
    assert response.json() == {
        "error": {
            "code": "too_many_requests",
            "message": "1 uploads are being read at once already, the limit; try again in 5 s.",
        }
    }
    assert not UploadedFile.objects.exists()


def test_an_upload_waits_briefly_for_a_place(owner_client, settings, one_place_taken):
    settings.UPLOAD_EXTRACT_WAIT_SECONDS = 5
    threading.Timer(0.5, file_extraction_slots.give_back).start()  # the running upload ends
    started = time.monotonic()
    response = upload(owner_client, "note.txt", b"hello", "text/plain")
    assert file_extraction_slots.try_take()  # taken back for the fixture to give

    assert response.status_code == 201, response.content
    assert time.monotonic() - started >= 0.5


# --- under the ASGI web process: the wait for a place is on the event loop --------------------


def _asgi_upload(app, raw_key: str, name: str, data: bytes, content_type: str):  # noqa: ANN001, ANN201
    from tests.asgi import asgi_call, multipart

    body, header = multipart({"file": SimpleUploadedFile(name, data, content_type=content_type)})
    return asgi_call(app, "POST", URL, body=body, headers=[header, (b"authorization", f"Bearer {raw_key}".encode())])


@pytest.mark.django_db(transaction=True)
def test_under_asgi_an_upload_finding_no_place_in_time_is_refused_with_429(owner, settings, monkeypatch):
    from core.asgi import ASGIHandler

    settings.UPLOAD_EXTRACT_CONCURRENCY = 1
    settings.UPLOAD_EXTRACT_WAIT_SECONDS = 0.3
    settings.UPLOAD_EXTRACT_CPU_SECONDS = 1
    settings.PDF_MAX_CONTENT_OPERATIONS = 10**9
    started = []
    real_exec = asyncio.create_subprocess_exec

    async def counted_exec(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started.append(args)
        return await real_exec(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", counted_exec)
    app = ASGIHandler()
    _, raw_key = api_key_create(user=owner, name="asgi")
    slow = make_pdf_of_operations(pages=3, operation=b"BT () Tj ET\n")

    async def one_after_the_other() -> tuple:
        first = asyncio.create_task(_asgi_upload(app, raw_key, "slow.pdf", slow, "application/pdf"))
        while file_extraction_slots.taken == 0:  # the slow one runs
            await asyncio.sleep(0.01)
        second = await _asgi_upload(app, raw_key, "note.txt", b"hello", "text/plain")
        return await first, second

    (first_status, _, first_body), (status, headers, body) = asyncio.run(one_after_the_other())

    assert first_status == 400 and b"CPU time" in first_body
    assert status == 429, body
    assert headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "too_many_requests"
    assert len(started) == 1  # the refused upload started no child
    assert file_extraction_slots.taken == 0
    assert not UploadedFile.objects.exists()
