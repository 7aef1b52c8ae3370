"""`file_read`: a window of the caller's own uploaded file's extracted text."""

from typing import Any

from django.db.models.functions import Length, Substr

from accounts.models import User
from chat.models import UploadedFile
from chat.tools.base import Tool, ToolResult
from core.pagination import BIGINT_MAX

DEFAULT_CHARS = 4_000
MAX_CHARS = 8_000  # a larger `limit` is capped to this, not refused
# SQL SUBSTR takes a 32-bit position; no stored text comes near that length anyway.
OFFSET_MAX = 2**31 - 2

PARAMETERS = {
    "type": "object",
    "properties": {
        "file_id": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX, "description": "The file's id."},
        "offset": {
            "type": "integer",
            "minimum": 0,
            "maximum": OFFSET_MAX,
            "description": "Character offset to start reading at (default 0).",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "description": f"How many characters to read (default {DEFAULT_CHARS}, at most {MAX_CHARS}).",
        },
    },
    "required": ["file_id"],
    "additionalProperties": False,
}


def file_read_run(*, user: User, arguments: dict[str, Any], membership_id: int | None = None) -> ToolResult:
    # JSON Schema counts 3.0 as an integer; Python slicing does not.
    file_id = int(arguments["file_id"])
    offset = int(arguments.get("offset", 0))
    limit = min(int(arguments.get("limit", DEFAULT_CHARS)), MAX_CHARS)
    # Only the requested window leaves the database (a PDF's text can be megabytes).
    # The owner filter is the whole access rule: another user's id reads as unknown.
    files = UploadedFile.objects.filter(owner=user, pk=file_id)
    if membership_id is not None:  # an organization member's turn reads their own files only
        files = files.filter(membership_id=membership_id)
    row = (
        files
        .annotate(total=Length("extracted_text"), chunk=Substr("extracted_text", offset + 1, limit))
        .values("name", "content_type", "total", "chunk")
        .first()
    )
    if row is None:
        return ToolResult.error(f"No file with id {file_id}. Only files the user uploaded can be read.")
    total, label = row["total"] or 0, f'File {file_id} "{row["name"]}" ({row["content_type"]})'
    if total == 0:
        return ToolResult.success(f"{label} has no extractable text.")
    if offset >= total:
        return ToolResult.error(f"offset {offset} is past the end of {label}, which has {total} characters.")
    chunk = row["chunk"] or ""
    end = offset + len(chunk)
    text = f"{label}, characters {offset}-{end} of {total}:\n{chunk}"
    if end < total:
        text += f"\n\n[{total - end} more characters; call file_read with offset={end} to continue.]"
    return ToolResult.success(text)


FILE_READ = Tool(
    name="file_read",
    description=(
        "Read the text of a file the user uploaded (text, Markdown, CSV, JSON or PDF), "
        f"{MAX_CHARS} characters at most per call; use offset to continue."
    ),
    parameters=PARAMETERS,
    run=file_read_run,
    reads_own_data=True,
)
