import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from reporting.export import usage_summary_rows
from reporting.selectors import usage_summary_from_calls
from tests.billing.factories import ModelPriceFactory
from tests.chat.factories import ChatSessionFactory
from tests.reporting.factories import CallSpec, record_turn

pytestmark = pytest.mark.django_db


@pytest.fixture
def calls(owner, other_user):  # noqa: ANN001, ANN201
    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    ModelPriceFactory(alias="smart", input_credits_per_mtok=Decimal("3000"), output_credits_per_mtok=Decimal("15000"))
    record_turn(
        session=ChatSessionFactory(user=owner),
        calls=[
            # No class prices: the token classes do not change the credits.
            CallSpec(
                "fast",
                datetime(2025, 1, 31, 12, tzinfo=UTC),
                1000,
                200,
                cached_input_tokens=400,
                cache_write_tokens=30,
                reasoning_tokens=90,
            ),  # 0.2700
            CallSpec("smart", datetime(2025, 2, 3, 9, tzinfo=UTC), 2000, 100, cached_input_tokens=2000),  # 7.5000
        ],
    )
    record_turn(
        session=ChatSessionFactory(user=other_user), calls=[CallSpec("fast", datetime(2025, 2, 1, tzinfo=UTC), 1, 0)]
    )  # 0.0002


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("usage_report", *args, stdout=out)
    return out.getvalue()


def test_report_prints_totals_and_every_breakdown(calls, owner, other_user):
    out = run("--from", "2025-01-01", "--to", "2025-02-28", "--bucket", "month")
    assert (
        "Totals: calls 3, input tokens 3001 (cached 2400, cache writes 30), output tokens 300 (reasoning 90), "
        "credits 7.7702"
    ) in out
    lines = out.splitlines()
    header = ["calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"]
    assert lines[lines.index("By model") + 1].split() == ["model_alias", *header, "credits"]
    assert any(line.split() == ["fast", "2", "1001", "400", "30", "200", "90", "0.2702"] for line in lines)
    assert any(line.split() == ["smart", "1", "2000", "2000", "0", "100", "0", "7.5000"] for line in lines)
    owner_row = [str(owner.pk), owner.email, "2", "3000", "2400", "30", "300", "90", "7.7700"]
    assert any(line.split() == owner_row for line in lines)
    assert any(line.split() == ["2025-01-01", "1", "1000", "400", "30", "200", "90", "0.2700"] for line in lines)
    assert any(line.split() == ["2025-02-01", "2", "2001", "2000", "0", "100", "0", "7.5002"] for line in lines)


def test_report_filters_by_user_email_or_id_and_model(calls, owner):
    by_email = run("--from", "2025-01-01", "--to", "2025-12-31", "--user", owner.email, "--model", "fast")
    assert (
        "Totals: calls 1, input tokens 1000 (cached 400, cache writes 30), output tokens 200 (reasoning 90), "
        "credits 0.2700"
    ) in by_email
    by_id = run("--from", "2025-01-01", "--to", "2025-12-31", "--user", str(owner.pk), "--model", "fast")
    assert by_id == by_email


def test_report_csv_is_the_api_csv(calls):
    out = run("--from", "2025-01-01", "--to", "2025-02-28", "--bucket", "week", "--csv")
    expected = usage_summary_from_calls(from_date=date(2025, 1, 1), to_date=date(2025, 2, 28), bucket="week")
    assert list(csv.reader(io.StringIO(out))) == usage_summary_rows(expected)


def test_report_of_an_empty_range_prints_zeros(calls):
    out = run("--from", "2020-01-01", "--to", "2020-01-31")
    assert (
        "Totals: calls 0, input tokens 0 (cached 0, cache writes 0), output tokens 0 (reasoning 0), credits 0.0000"
    ) in out
    assert "(none)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2025-02-01", "--to", "2025-01-01"], "--from"),
        (["--from", "2025-01-01", "--to", "31/01/2025"], "--to"),
        (["--from", "2025-01-01", "--to", "2025-01-31", "--user", "nobody@example.com"], "--user"),
    ],
)
def test_report_rejects_bad_options_naming_them(db, args, message):
    with pytest.raises(CommandError, match=message):
        run(*args)


def test_usage_report_filters_and_breaks_down_by_end_user_and_purpose(owner):
    from accounts.models import EndUser
    from accounts.services import api_key_create

    ModelPriceFactory(alias="fast", input_credits_per_mtok=Decimal("150"), output_credits_per_mtok=Decimal("600"))
    ada = EndUser.objects.create(api_key=api_key_create(user=owner, name="k")[0], external_id="ada")
    session, when = ChatSessionFactory(user=owner), datetime(2025, 1, 2, 12, tzinfo=UTC)
    record_turn(session=session, calls=[CallSpec("fast", when, 1000, 100)], end_user=ada, purpose="title")
    record_turn(session=session, calls=[CallSpec("fast", when, 10, 1)])

    out = io.StringIO()
    call_command("usage_report", "--from", "2025-01-01", "--to", "2025-01-31", stdout=out)
    assert "By end user" in out.getvalue() and "By purpose" in out.getvalue()
    out = io.StringIO()
    call_command("usage_report", "--from", "2025-01-01", "--to", "2025-01-31", "--end-user", str(ada.pk),
                 "--purpose", "title", stdout=out)  # fmt: skip
    assert "Totals: calls 1, input tokens 1000" in out.getvalue()
