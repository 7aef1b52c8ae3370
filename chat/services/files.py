"""Uploaded files: the rules for what may be stored (the reads are in chat.selectors).

Invariants:
- A file is stored only when every check passed: allowed type (declared content type,
  file name extension and the bytes themselves agree), size within MAX_UPLOAD_BYTES,
  text that decodes (or a PDF pypdf can read). A refused upload leaves no row.
- Text is extracted in a child process bounded in time, CPU time, memory, PDF pages,
  inflated bytes and content operations (chat/extraction.py); an upload past a bound
  is refused (400 naming `file`, saying which bound), never half-stored.
- At most UPLOAD_EXTRACT_CONCURRENCY children run at once in a process; an upload
  that finds no place within UPLOAD_EXTRACT_WAIT_SECONDS is refused with 429 and
  Retry-After (file_extraction_slots).
- Only the extracted text is kept (in the row); the raw bytes are never written to
  disk, so deleting the row deletes everything.
"""

import hashlib
import json
import logging
import math
import signal
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath

from django.conf import settings

from accounts.models import User
from chat.extraction import cpu_limit_message
from chat.models import ChatSession, UploadedFile
from core.exceptions import TooManyRequests, field_error

logger = logging.getLogger(__name__)

PDF = "application/pdf"

# Canonical type -> the declared content types a client may send for it. Browsers and
# OSes disagree on the labels (a CSV from Windows is "application/vnd.ms-excel", curl
# sends "application/octet-stream"); the extension and the bytes settle it.
DECLARED_ALIASES: dict[str, frozenset[str]] = {
    "text/plain": frozenset({"text/plain"}),
    "text/markdown": frozenset({"text/markdown", "text/x-markdown", "text/plain"}),
    "text/csv": frozenset({"text/csv", "application/csv", "application/vnd.ms-excel", "text/plain"}),
    "application/json": frozenset({"application/json", "text/json", "text/plain"}),
    PDF: frozenset({PDF, "application/x-pdf"}),
}
ALLOWED_TYPES = tuple(DECLARED_ALIASES)
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})

EXTENSION_TYPES: dict[str, str] = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".log": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
    ".pdf": PDF,
}

# Where `python -m chat.extraction` is found.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A PDF's text can be far larger than its compressed bytes; keep a bounded amount.
EXTRACTED_TEXT_MAX_CHARS = 2_000_000
NAME_MAX_CHARS = 255


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that passed every check but the reading of its text."""

    name: str
    content_type: str
    data: bytes
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


def _reject(message: str) -> Exception:
    return field_error("file", message)


def _clean_name(raw_name: str) -> str:
    # Browsers send a bare name, other clients may send a path; keep the last part,
    # drop control characters (they would end up in logs and the admin), cap the length
    # while keeping the extension.
    name = PurePath(raw_name.replace("\\", "/")).name
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if len(name) > NAME_MAX_CHARS:
        suffix = PurePath(name).suffix[:16]
        name = name[: NAME_MAX_CHARS - len(suffix)] + suffix
    return name


def _declared(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _resolve_type(*, name: str, declared: str) -> str:
    """The canonical type, when the declared content type and the extension agree."""
    allowed = ", ".join(ALLOWED_TYPES)
    extension = PurePath(name).suffix.lower()
    by_extension = EXTENSION_TYPES.get(extension)
    if extension and by_extension is None:
        raise _reject(f"Files of type '{extension}' are not accepted; allowed: {allowed}.")
    if by_extension is None:
        # No extension: only an exact allowed content type can vouch for the file.
        if declared in DECLARED_ALIASES:
            return declared
        raise _reject(f"Content type '{declared or 'missing'}' is not accepted; allowed: {allowed}.")
    if declared in GENERIC_TYPES or declared in DECLARED_ALIASES[by_extension]:
        return by_extension
    raise _reject(f"The content type '{declared}' does not match a '{extension}' file.")


def file_extraction_command(*, upload: CheckedUpload) -> list[str]:
    """The child process that reads an upload's text (its bytes go to its stdin):
    `python -m chat.extraction` with the limits, run from the project root. Whoever
    runs it kills it after UPLOAD_EXTRACT_TIMEOUT_SECONDS (file_extract here; the
    upload view on the event loop) and passes what it printed to file_extraction_answer."""
    limits = {
        "content_type": upload.content_type,
        "max_pages": settings.PDF_MAX_PAGES,
        "max_decoded_bytes": settings.PDF_MAX_DECODED_BYTES,
        "max_operations": settings.PDF_MAX_CONTENT_OPERATIONS,
        "max_chars": EXTRACTED_TEXT_MAX_CHARS,
        "memory_bytes": settings.UPLOAD_EXTRACT_MEMORY_MB * 1024 * 1024,
        "cpu_seconds": settings.UPLOAD_EXTRACT_CPU_SECONDS,
    }
    return [sys.executable, "-m", "chat.extraction", json.dumps(limits)]


def file_extraction_timed_out() -> Exception:
    timeout = settings.UPLOAD_EXTRACT_TIMEOUT_SECONDS
    logger.info("refused an upload whose text took over %s s to extract", timeout)
    return _reject(f"Reading the text of this file took longer than {timeout:g} s, the limit; it was not stored.")


def file_extraction_answer(*, stdout: bytes, stderr: bytes, returncode: int | None) -> str:
    """The text the child printed, or the 400 naming `file` it refused the upload with."""
    try:
        answer = json.loads(stdout)
    except ValueError:
        if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            # Its CPU limit, before its own handler could answer (the kernel sends
            # SIGKILL at the hard limit; the time limit's kill never gets here).
            logger.info("refused an upload whose extraction passed its CPU limit")
            raise _reject(cpu_limit_message(settings.UPLOAD_EXTRACT_CPU_SECONDS))
        # Killed by its memory cap, or crashed: stderr goes to the log, not to the client.
        logger.warning("upload extraction exited %s: %s", returncode, stderr[-2000:].decode(errors="replace"))
        raise _reject("The file could not be read within the limits for uploads.")
    if "refused" in answer:
        raise _reject(answer["refused"])
    return answer["text"][:EXTRACTED_TEXT_MAX_CHARS]


class ExtractionSlots:
    """The places for extraction children in this process: at most
    UPLOAD_EXTRACT_CONCURRENCY taken at once (read at each take, so a changed setting
    applies to the next upload). A thread waits for a place (`slot`); the event loop
    polls `try_take` instead (chat.api.files), holding no thread."""

    def __init__(self) -> None:
        self._free = threading.Condition()
        self.taken = 0

    def _has_room(self) -> bool:
        return self.taken < settings.UPLOAD_EXTRACT_CONCURRENCY

    def try_take(self) -> bool:
        with self._free:
            if not self._has_room():
                return False
            self.taken += 1
            return True

    def give_back(self) -> None:
        with self._free:
            self.taken -= 1
            self._free.notify()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Holds a place while the block runs; 429 when none came free in time."""
        with self._free:
            if not self._free.wait_for(self._has_room, timeout=settings.UPLOAD_EXTRACT_WAIT_SECONDS):
                raise file_extraction_busy()
            self.taken += 1
        try:
            yield
        finally:
            self.give_back()


file_extraction_slots = ExtractionSlots()


def file_extraction_busy() -> Exception:
    """The 429 for an upload that found no place for its extraction in time. Retry-After:
    the longest a running extraction can keep its place (its CPU limit, on a machine
    that is not overloaded)."""
    limit, retry_after = settings.UPLOAD_EXTRACT_CONCURRENCY, max(1, math.ceil(settings.UPLOAD_EXTRACT_CPU_SECONDS))
    logger.info("refused an upload: %d extractions already running", limit)
    return TooManyRequests(
        f"{limit} uploads are being read at once already, the limit; try again in {retry_after} s.",
        retry_after=retry_after,
    )


def file_extract(*, upload: CheckedUpload) -> str:
    """The upload's text, read by the child process (chat/extraction.py: bounded in
    time, CPU time, memory, PDF pages, inflated bytes and content operations), once
    it has a place (file_extraction_slots). This thread only waits, without the GIL;
    under the ASGI web process the upload view waits on the event loop instead and
    holds no thread at all."""
    with file_extraction_slots.slot():
        try:
            child = subprocess.run(  # noqa: S603  our own module, arguments we built
                file_extraction_command(upload=upload),
                input=upload.data,
                capture_output=True,
                timeout=settings.UPLOAD_EXTRACT_TIMEOUT_SECONDS,
                cwd=PROJECT_ROOT,
                check=False,
            )
        except subprocess.TimeoutExpired:  # subprocess.run has killed the child
            raise file_extraction_timed_out()
    return file_extraction_answer(stdout=child.stdout, stderr=child.stderr, returncode=child.returncode)


def file_check(*, name: str, declared_type: str | None, data: bytes) -> CheckedUpload:
    """Validate an upload (name, size, type); raises a 400 naming `file` when refused.
    Its text is read next (file_extract)."""
    clean_name = _clean_name(name or "")
    if not clean_name:
        raise _reject("The file has no name.")
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise _reject(f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes.")
    if not data:
        raise _reject("The file is empty.")
    content_type = _resolve_type(name=clean_name, declared=_declared(declared_type))
    return CheckedUpload(name=clean_name, content_type=content_type, data=data, sha256=hashlib.sha256(data).hexdigest())


def file_session_check(*, owner: User, session: ChatSession | None) -> None:
    if session is not None and session.user_id != owner.pk:
        raise field_error("session", "No such session.")


def file_store(
    *, owner: User, upload: CheckedUpload, text: str, session: ChatSession | None = None,
    membership_id: int | None = None,
) -> UploadedFile:  # fmt: skip
    """Stores a checked upload with its extracted text (the bytes themselves are not kept).
    `membership_id`: uploaded through an organization member's key (only theirs read it)."""
    file_session_check(owner=owner, session=session)
    return UploadedFile.objects.create(
        owner=owner,
        membership_id=membership_id,
        session=session,
        name=upload.name,
        content_type=upload.content_type,
        size=upload.size,
        sha256=upload.sha256,
        extracted_text=text,
    )


def file_create(
    *, owner: User, name: str, declared_type: str | None, data: bytes, session: ChatSession | None = None
) -> UploadedFile:
    """Store an upload for `owner`. Every check runs before the row is written."""
    file_session_check(owner=owner, session=session)
    upload = file_check(name=name, declared_type=declared_type, data=data)
    return file_store(owner=owner, upload=upload, text=file_extract(upload=upload), session=session)


def file_delete(*, file: UploadedFile) -> None:
    # Only the row holds the file (no bytes on disk), so this is the whole deletion.
    file.delete()
