"""The usage summary as one CSV table (API, admin page and `usage_report --csv`):

section,key,email,calls,input_tokens,output_tokens,credits
total,,,12,3400,560,1.2345
model,fast,,...
user,7,ann@example.com,...
bucket,2025-01-06,,...
"""

import csv
import io

from django.http import HttpResponse

from billing.money import format_usage

HEADER = ["section", "key", "email", "calls", "input_tokens", "output_tokens", "credits"]
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
        str(figures["input_tokens"]),
        str(figures["output_tokens"]),
        format_usage(figures["credits"]),
    ]


def usage_summary_rows(summary: dict) -> list[list[str]]:
    rows = [HEADER, _row("total", "", "", summary["totals"])]
    rows += [_row("model", row["model_alias"], "", row) for row in summary["by_model"]]
    rows += [_row("user", row["user_id"], row["email"], row) for row in summary["by_user"]]
    rows += [_row("bucket", row["bucket"].isoformat(), "", row) for row in summary["by_bucket"]]
    rows += [_row("source", row["source"], "", row) for row in summary.get("by_source", ())]
    return rows


def usage_summary_csv(summary: dict) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(usage_summary_rows(summary))
    return buffer.getvalue()


def usage_csv_filename(summary: dict) -> str:
    start = summary["from_date"].isoformat() if summary["from_date"] else "start"
    end = summary["to_date"].isoformat() if summary["to_date"] else "now"
    scope = f"_user{summary['user_id']}" if summary["user_id"] else ""
    return f"usage_{start}_{end}_{summary['bucket']}{scope}.csv"


def usage_csv_response(summary: dict) -> HttpResponse:
    response = HttpResponse(usage_summary_csv(summary), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{usage_csv_filename(summary)}"'
    return response
