"""Text extraction of an upload, in a child process with hard bounds.

chat.services.files runs `python -m chat.extraction` for every upload: the bytes on
stdin, the limits as one JSON argument, the answer as one JSON object on stdout
({"text": ...} or {"refused": "<why>"}). The child is killed when it passes the time
limit, its CPU time is capped (RLIMIT_CPU: SIGXCPU at `cpu_seconds`, answered with a
refusal; SIGKILL a second later) and its address space too, so no upload can hold
the web process's CPU (and with it the GIL, its event loop and every other request)
or its memory.

Bounds inside the child:
- PDF: at most `max_pages` pages; the page content streams it inflates add up to at
  most `max_decoded_bytes` (pypdf's own per-stream limits are set to that too, so a
  single bomb stream stops inflating there instead of at pypdf's 75 MB); they hold
  at most `max_operations` operations (operators and operands), counted at the speed
  of a regular expression before pypdf parses any of them (pypdf spends microseconds
  on each: 3 pages of 3 MB of `BT ET` took it 12 s). pypdf's per-stream parse budget
  (`stream_parsing_work_maximum_count`, counted the same way) is set to that bound
  too, which stops a stream the count missed and each form XObject (not counted:
  the CPU limit bounds a page that invokes many);
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
import signal
import sys
from typing import Any

PDF = "application/pdf"
# Control characters (Unicode "Cc") other than tab, newline, form feed and carriage return.
BINARY_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


class Refused(Exception):
    """The upload is refused; the message says why, for the client."""


class CpuTimeExceeded(BaseException):
    """Raised by SIGXCPU. A BaseException, so pypdf's own `except Exception` (around
    each form XObject, say) cannot swallow it."""


def _on_cpu_limit(signum: int, frame: object) -> None:
    raise CpuTimeExceeded


def cpu_limit_message(seconds: int) -> str:
    return f"Reading the text of this file needed more than {seconds} s of CPU time, the limit; it was not stored."


# A content stream's tokens (ISO 32000-1, 7.2 and 7.8.2). Skipped whole and counted
# one each: a literal string (without nested parentheses: a nested one leaves its
# words counted as tokens, more than there are, never fewer), a hex string, a comment
# (which pypdf does not count). Then every run of regular characters is one token (an
# operator, a number, a name after its "/", true, false, null), and every array and
# dictionary is one besides what it holds, as pypdf counts them.
_STRINGS = re.compile(rb"\((?:[^()\\]|\\.)*\)|<[0-9A-Fa-f\s]*>|%[^\r\n]*", re.DOTALL)
_REGULAR = re.compile(rb"[^\x00\t\n\x0c\r ()<>\[\]{}/%]+")


# Counted a piece at a time, so a count stops soon after it passes its bound.
_COUNT_PIECE_BYTES = 256 * 1024


def _count_piece(content: bytes) -> int:
    stripped, strings = _STRINGS.subn(b" ", content)
    return strings + _REGULAR.subn(b"", stripped)[1] + stripped.count(b"[") + stripped.count(b"<<")


def count_operations(content: bytes, *, stop_above: int | None = None) -> int:
    """The operators and operands in a content stream (what pypdf's parse budget
    counts), by the regular expression engine (about 0.1 s a million), a piece at a
    time: with `stop_above`, it returns as soon as the count passes it. Pieces end at
    a line break where there is one; a token or string cut in two counts twice (more,
    never fewer)."""
    count, start = 0, 0
    while start < len(content):
        end = start + _COUNT_PIECE_BYTES
        if end < len(content):
            line_end = content.rfind(b"\n", start, end)
            end = line_end + 1 if line_end > start else end
        count += _count_piece(content[start:end])
        if stop_above is not None and count > stop_above:
            break
        start = end
    return count


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


def extract_pdf_text(
    data: bytes, *, max_pages: int, max_decoded_bytes: int, max_operations: int, max_chars: int
) -> str:
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
        stream_parsing_work_maximum_count=max_operations,
    )
    too_much = (
        f"The PDF's page content inflates to more than {_megabytes(max_decoded_bytes)}; "
        "at most that much is read (a PDF of that size is almost certainly not text)."
    )
    too_many = (
        f"The PDF's page content holds more than {max_operations} operations (operators and operands); "
        "at most that many are read (a PDF with that many is almost certainly not text)."
    )
    parts: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Refused("The PDF is password-protected; upload an unprotected copy.")
        count = len(reader.pages)
        if count > max_pages:
            raise Refused(f"The PDF has {count} pages; at most {max_pages} are read. Split it and upload the parts.")
        # What extract_text will parse, inflated and counted for every page before
        # any is parsed. Per page, so pages that share one stream count it once each
        # (that is the work they cost).
        decoded = operations = 0
        for page in reader.pages:
            contents = page.get_contents()
            content = contents.get_data() if contents is not None else b""
            decoded += len(content)
            if decoded > max_decoded_bytes:
                raise Refused(too_much)
            operations += count_operations(content, stop_above=max_operations - operations)
            if operations > max_operations:
                raise Refused(too_many)
            del content
        total = 0
        for page in reader.pages:
            text = page.extract_text() or ""
            parts.append(text)
            total += len(text)
            if total >= max_chars:
                break
    except (Refused, MemoryError):
        raise
    except LimitReachedError as exc:
        # pypdf 7.1's parse budget says "Reached maximum number of tokens per stream."
        raise Refused(too_many if "tokens" in str(exc) else too_much) from None
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
            max_operations=limits["max_operations"],
            max_chars=limits["max_chars"],
        )
    else:
        text = decode_text(data, content_type)
    return text[: limits["max_chars"]]


def main() -> None:
    limits = json.loads(sys.argv[1])
    memory, cpu = limits["memory_bytes"], limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # SIGXCPU at the soft limit (answered below); the kernel's SIGKILL at the hard one,
    # should the handler not get to run (it runs between bytecodes, after a C call).
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    data = sys.stdin.buffer.read()
    try:
        answer = {"text": extract(data, limits)}
    except Refused as exc:
        answer = {"refused": str(exc)}
    except MemoryError:
        answer = {"refused": f"Reading the file needs more than {_megabytes(memory)} of memory."}
    except CpuTimeExceeded:
        answer = {"refused": cpu_limit_message(cpu)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
