from datetime import date

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reporting.services import usage_rollups_rebuild


def parse_day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option}: expected a date as YYYY-MM-DD, got {value!r}.")


class Command(BaseCommand):
    help = (
        "Recomputes the daily usage rollups from the raw LLM calls (delete and recompute in one "
        "transaction). --from/--to limit it to a range of UTC days (inclusive); default: everything."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="from_date", help="First UTC day (YYYY-MM-DD).")
        parser.add_argument("--to", dest="to_date", help="Last UTC day (YYYY-MM-DD).")

    def handle(self, *args, from_date: str | None, to_date: str | None, **options) -> None:
        start, end = parse_day(from_date, "--from"), parse_day(to_date, "--to")
        if start and end and start > end:
            raise CommandError("--from must not be after --to.")
        written = usage_rollups_rebuild(from_date=start, to_date=end)
        scope = f"{start or 'the first call'} to {end or 'the last call'}"
        self.stdout.write(f"Rebuilt usage rollups from {scope}: {written} rollup row(s).")
