from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from billing.money import format_usage
from organizations.models import Membership, Organization
from reporting.export import usage_summary_csv
from reporting.management.commands.rebuild_usage_rollups import parse_day
from reporting.selectors import BUCKETS, FIGURES, TOKENS, usage_summary


def _table(title: str, key_names: tuple[str, ...], rows: list[dict]) -> list[str]:
    header = [*key_names, *FIGURES]
    body = [
        [str(row[name]) for name in key_names]
        + [str(row[name]) for name in ("calls", *TOKENS)]
        + [format_usage(row["credits"])]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < len(key_names) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )

    return ["", title, fmt(header), *(fmt(line) for line in body)] if body else ["", title, "  (none)"]


class Command(BaseCommand):
    help = "Prints the usage summary (the same figures as GET /api/v1/admin/usage/summary) for a range of UTC days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="from_date", required=True, help="First UTC day (YYYY-MM-DD).")
        parser.add_argument("--to", dest="to_date", required=True, help="Last UTC day (YYYY-MM-DD).")
        parser.add_argument("--bucket", choices=BUCKETS, default="day")
        parser.add_argument("--user", help="Only this user (email or id).")
        parser.add_argument("--model", help="Only this model alias.")
        parser.add_argument("--end-user", type=int, help="Only this end user (their id: GET users/me/end-users).")
        parser.add_argument("--organization", help="Only this organization's usage (slug or id).")
        parser.add_argument(
            "--member", type=int, help="Only the usage through this member's keys (membership id; 0: personal usage)."
        )
        parser.add_argument("--purpose", help="Only requests labelled with this purpose (e.g. title).")
        parser.add_argument("--csv", action="store_true", help="Print CSV (the API's format=csv) instead of tables.")

    def handle(self, *args, **options) -> None:
        start, end = parse_day(options["from_date"], "--from"), parse_day(options["to_date"], "--to")
        if start > end:
            raise CommandError("--from must not be after --to.")
        user = self._user(options["user"]) if options["user"] else None
        organization = self._organization(options["organization"]) if options["organization"] else None
        member = options["member"]
        if member is not None and (member < 0 or (member and not Membership.objects.filter(pk=member).exists())):
            raise CommandError(f"--member: no member {member} (a membership id; 0: personal usage).")
        summary = usage_summary(
            user_id=user.pk if user else None,
            model_alias=options["model"],
            from_date=start,
            to_date=end,
            bucket=options["bucket"],
            end_user_id=options["end_user"],
            purpose=options["purpose"],
            organization_id=organization.pk if organization else None,
            member_id=member,
        )
        if options["csv"]:
            self.stdout.write(usage_summary_csv(summary), ending="")
            return
        totals = summary["totals"]
        lines = [
            f"Usage from {start} to {end} (UTC days), by {options['bucket']}; "
            f"user: {user.email if user else 'all'}; model: {options['model'] or 'all'}"
            + (f"; organization: {organization.slug}" if organization else "")
            + (f"; member: {member or 'none (personal)'}" if member is not None else ""),
            f"Totals: calls {totals['calls']}, input tokens {totals['input_tokens']} "
            f"(cached {totals['cached_input_tokens']}, cache writes {totals['cache_write_tokens']}), "
            f"output tokens {totals['output_tokens']} (reasoning {totals['reasoning_tokens']}), "
            f"credits {format_usage(totals['credits'])}",
            *_table("By model", ("model_alias",), summary["by_model"]),
            *_table("By user", ("user_id", "email"), summary["by_user"]),
            *_table("By end user", ("end_user_id", "external_id"), summary["by_end_user"]),
            *_table("By purpose", ("purpose",), summary["by_purpose"]),
            *_table("By organization (none: personal)", ("organization_id", "slug"), summary["by_organization"]),
            *_table("By member (none: personal)", ("membership_id", "email"), summary["by_member"]),
            *_table(f"By {options['bucket']}", ("bucket",), summary["by_bucket"]),
        ]
        self.stdout.write("\n".join(lines))

    def _user(self, value: str) -> User:
        by_id = value.isdigit() and int(value) < 2**63
        found = User.objects.filter(pk=int(value)) if by_id else User.objects.filter(email__iexact=value)
        user = found.first()
        if user is None:
            raise CommandError(f"--user: no user {value!r}.")
        return user

    def _organization(self, value: str) -> Organization:
        by_id = value.isdigit() and int(value) < 2**63
        found = Organization.objects.filter(pk=int(value)) if by_id else Organization.objects.filter(slug=value)
        organization = found.first()
        if organization is None:
            raise CommandError(f"--organization: no organization {value!r}.")
        return organization
