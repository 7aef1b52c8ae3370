"""The usage summary as one CSV table (API, admin page and `usage_report --csv`):

section,key,email,calls,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,credits
total,,,12,3400,1200,0,560,128,1.2345
model,fast,,...
user,7,ann@example.com,...
bucket,2025-01-06,,...
source,chat,,...
end_user,<the id the client sent; empty: none named>,<its API key's name>,...
purpose,title,,...
organization,<organization id; empty: personal usage>,<its name>,...
member,<membership id; empty: through no member's key>,<the member's email>,...

(cached_input_tokens and cache_write_tokens are part of input_tokens, reasoning_tokens
part of output_tokens.)
"""

import csv
import io

from django.http import HttpResponse

from billing.money import format_usage
from reporting.selectors import FIGURES, TOKENS

HEADER = ["section", "key", "email", *FIGURES]
# A cell starting with one of these is a formula in spreadsheet programs (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _row(section: str, key: object, email: object, figures: dict) -> list[str]:
    return [
        section,
        _text(key),
        _text(email),
        str(figures["calls"]),
        *(str(figures[name]) for name in TOKENS),
        format_usage(figures["credits"]),
    ]


def usage_summary_rows(summary: dict) -> list[list[str]]:
    rows = [HEADER, _row("total", "", "", summary["totals"])]
    rows += [_row("model", row["model_alias"], "", row) for row in summary["by_model"]]
    rows += [_row("user", row["user_id"], row["email"], row) for row in summary["by_user"]]
    rows += [_row("bucket", row["bucket"].isoformat(), "", row) for row in summary["by_bucket"]]
    rows += [_row("source", row["source"], "", row) for row in summary.get("by_source", ())]
    rows += [
        _row("end_user", row["external_id"] or "", row["api_key_name"] or "", row)
        for row in summary.get("by_end_user", ())
    ]
    rows += [_row("purpose", row["purpose"], "", row) for row in summary.get("by_purpose", ())]
    rows += [
        _row("organization", row["organization_id"] or "", row["name"] or "", row)
        for row in summary.get("by_organization", ())
    ]
    rows += [
        _row("member", row["membership_id"] or "", row["email"] or "", row) for row in summary.get("by_member", ())
    ]
    return rows


def usage_summary_csv(summary: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(usage_summary_rows(summary))
    return buffer.getvalue()


def usage_csv_filename(summary: dict) -> str:
    start = summary["from_date"].isoformat() if summary["from_date"] else "start"
    end = summary["to_date"].isoformat() if summary["to_date"] else "now"
    scope = f"_user{summary['user_id']}" if summary["user_id"] else ""
    if summary.get("organization_id"):
        scope += f"_org{summary['organization_id']}"
    if summary.get("member_id") is not None:
        scope += f"_member{summary['member_id']}"
    return f"usage_{start}_{end}_{summary['bucket']}{scope}.csv"


def usage_csv_response(summary: dict) -> HttpResponse:
    response = HttpResponse(usage_summary_csv(summary), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{usage_csv_filename(summary)}"'
    return response
