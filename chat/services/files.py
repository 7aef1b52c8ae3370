"""Uploaded files: the rules for what may be stored (the reads are in chat.selectors).

Invariants:
- A file is stored only when every check passed: allowed type (declared content type,
  file name extension and the bytes themselves agree), size within MAX_UPLOAD_BYTES,
  text that decodes (or a PDF pypdf can read). A refused upload leaves no row.
- Only the extracted text is kept (in the row); the raw bytes are never written to
  disk, so deleting the row deletes everything.
"""

import hashlib
import io
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePath

from django.conf import settings

from accounts.models import User
from chat.models import ChatSession, UploadedFile
from core.exceptions import field_error

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

# Control characters (Unicode "Cc") other than tab, newline, form feed and carriage return.
BINARY_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")

# A PDF's text can be far larger than its compressed bytes; keep a bounded amount.
EXTRACTED_TEXT_MAX_CHARS = 2_000_000
NAME_MAX_CHARS = 255


@dataclass(frozen=True)
class CheckedUpload:
    name: str
    content_type: str
    size: int
    sha256: str
    text: str


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


def _decode_text(data: bytes, content_type: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _reject(f"The file is declared as {content_type} but is not UTF-8 text.")
    # A NUL or a run of other control characters means binary data posing as text
    # (tab, newline, carriage return and form feed are what real text files contain).
    controls = sum(1 for _ in BINARY_CONTROLS.finditer(text))
    if "\x00" in text or controls > max(8, len(text) // 1000):
        raise _reject(f"The file is declared as {content_type} but contains binary data.")
    if content_type == "application/json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise _reject(f"The file is not valid JSON ({exc.msg} at line {exc.lineno}).")
        except RecursionError:
            raise _reject("The file is not valid JSON (nested too deeply).")
    return text


def _extract_pdf_text(data: bytes) -> str:
    # Imported here: pypdf is only needed for PDF uploads.
    from pypdf import PdfReader

    if not data.startswith(b"%PDF-"):
        raise _reject("The file is declared as a PDF but does not start with a PDF header.")
    parts: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        locked = reader.is_encrypted and not reader.decrypt("")
        total = 0
        for page in [] if locked else reader.pages:
            text = page.extract_text() or ""
            parts.append(text)
            total += len(text)
            if total >= EXTRACTED_TEXT_MAX_CHARS:
                break
    except Exception as exc:  # noqa: BLE001
        # pypdf raises many exception types (its own, ValueError, KeyError, TypeError,
        # RecursionError...) on malformed input; every one of them means "unreadable".
        logger.info("rejected an unreadable PDF upload: %s", type(exc).__name__)
        raise _reject("The PDF could not be read.")
    if locked:
        raise _reject("The PDF is password-protected; upload an unprotected copy.")
    # PostgreSQL text cannot hold NUL; some PDFs' text layers contain it.
    return "\n\n".join(parts).replace("\x00", "")[:EXTRACTED_TEXT_MAX_CHARS]


def file_check(*, name: str, declared_type: str | None, data: bytes) -> CheckedUpload:
    """Validate an upload and extract its text; raises a 400 naming `file` when refused."""
    clean_name = _clean_name(name or "")
    if not clean_name:
        raise _reject("The file has no name.")
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise _reject(f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes.")
    if not data:
        raise _reject("The file is empty.")
    content_type = _resolve_type(name=clean_name, declared=_declared(declared_type))
    text = _extract_pdf_text(data) if content_type == PDF else _decode_text(data, content_type)
    return CheckedUpload(
        name=clean_name,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        text=text[:EXTRACTED_TEXT_MAX_CHARS],
    )


def file_create(
    *, owner: User, name: str, declared_type: str | None, data: bytes, session: ChatSession | None = None
) -> UploadedFile:
    """Store an upload for `owner`. Every check runs before the row is written."""
    if session is not None and session.user_id != owner.pk:
        raise field_error("session", "No such session.")
    checked = file_check(name=name, declared_type=declared_type, data=data)
    return UploadedFile.objects.create(
        owner=owner,
        session=session,
        name=checked.name,
        content_type=checked.content_type,
        size=checked.size,
        sha256=checked.sha256,
        extracted_text=checked.text,
    )


def file_delete(*, file: UploadedFile) -> None:
    # Only the row holds the file (no bytes on disk), so this is the whole deletion.
    file.delete()
