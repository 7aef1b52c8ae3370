"""Text extraction of an upload, in a child process with hard bounds.

chat.services.files runs `python -m chat.extraction` for every upload: the bytes on
stdin, the limits as one JSON argument, the answer as one JSON object on stdout
({"text": ...} or {"refused": "<why>"}). The child is killed when it passes the time
limit, and its address space is capped, so no upload can hold the web process's
CPU (and with it the GIL, its event loop and every other request) or its memory.

Bounds inside the child:
- PDF: at most `max_pages` pages; the page content streams it inflates add up to at
  most `max_decoded_bytes` (pypdf's own per-stream limits are set to that too, so a
  single bomb stream stops inflating there instead of at pypdf's 75 MB);
- text types: the bytes are already bounded by MAX_UPLOAD_BYTES, and decoding or
  parsing JSON is linear in them;
- every type: at most `max_chars` characters of text are kept.

Only the standard library and pypdf are imported: the child never loads Django.
"""

from __future__ import annotations

import io
import json
import re
import resource
import sys
from typing import Any

PDF = "application/pdf"
# Control characters (Unicode "Cc") other than tab, newline, form feed and carriage return.
BINARY_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


class Refused(Exception):
    """The upload is refused; the message says why, for the client."""


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.4g} MiB"


def decode_text(data: bytes, content_type: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refused(f"The file is declared as {content_type} but is not UTF-8 text.") from None
    # A NUL or a run of other control characters means binary data posing as text
    # (tab, newline, carriage return and form feed are what real text files contain).
    controls = sum(1 for _ in BINARY_CONTROLS.finditer(text))
    if "\x00" in text or controls > max(8, len(text) // 1000):
        raise Refused(f"The file is declared as {content_type} but contains binary data.")
    if content_type == "application/json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise Refused(f"The file is not valid JSON ({exc.msg} at line {exc.lineno}).") from None
        except RecursionError:
            raise Refused("The file is not valid JSON (nested too deeply).") from None
    return text


def extract_pdf_text(data: bytes, *, max_pages: int, max_decoded_bytes: int, max_chars: int) -> str:
    # Imported here: only PDFs need pypdf (the child of a text upload starts faster without it).
    from pypdf import PdfReader, overwrite_configuration
    from pypdf.errors import LimitReachedError

    if not data.startswith(b"%PDF-"):
        raise Refused("The file is declared as a PDF but does not start with a PDF header.")
    # No single stream may inflate past the whole budget (pypdf's defaults are 75 MB).
    overwrite_configuration(
        zlib_maximum_output_length=max_decoded_bytes,
        lzw_maximum_output_length=max_decoded_bytes,
        run_length_maximum_output_length=max_decoded_bytes,
        array_based_stream_maximum_output_length=max_decoded_bytes,
        stream_decoding_work_maximum_length=max_decoded_bytes,
    )
    too_much = (
        f"The PDF's page content inflates to more than {_megabytes(max_decoded_bytes)}; "
        "at most that much is read (a PDF of that size is almost certainly not text)."
    )
    parts: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Refused("The PDF is password-protected; upload an unprotected copy.")
        count = len(reader.pages)
        if count > max_pages:
            raise Refused(f"The PDF has {count} pages; at most {max_pages} are read. Split it and upload the parts.")
        decoded = total = 0
        for page in reader.pages:
            # What extract_text will parse: counted per page, so pages that share one
            # stream count it once each (that is the work they cost).
            contents = page.get_contents()
            decoded += len(contents.get_data()) if contents is not None else 0
            if decoded > max_decoded_bytes:
                raise Refused(too_much)
            text = page.extract_text() or ""
            parts.append(text)
            total += len(text)
            if total >= max_chars:
                break
    except (Refused, MemoryError):
        raise
    except LimitReachedError:
        raise Refused(too_much) from None
    except (Exception, RecursionError):  # noqa: BLE001
        # pypdf raises many exception types (its own, ValueError, KeyError, TypeError,
        # RecursionError...) on malformed input; every one of them means "unreadable".
        raise Refused("The PDF could not be read.") from None
    # PostgreSQL text cannot hold NUL; some PDFs' text layers contain it.
    return "\n\n".join(parts).replace("\x00", "")[:max_chars]


def extract(data: bytes, limits: dict[str, Any]) -> str:
    content_type = limits["content_type"]
    if content_type == PDF:
        text = extract_pdf_text(
            data,
            max_pages=limits["max_pages"],
            max_decoded_bytes=limits["max_decoded_bytes"],
            max_chars=limits["max_chars"],
        )
    else:
        text = decode_text(data, content_type)
    return text[: limits["max_chars"]]


def main() -> None:
    limits = json.loads(sys.argv[1])
    memory = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    data = sys.stdin.buffer.read()
    try:
        answer = {"text": extract(data, limits)}
    except Refused as exc:
        answer = {"refused": str(exc)}
    except MemoryError:
        answer = {"refused": f"Reading the file needs more than {_megabytes(memory)} of memory."}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
