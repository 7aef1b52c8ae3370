from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError

from core.exceptions import ApplicationError
from routing.services import Changes, models_file_apply

MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader (plain data, nothing constructed but strings, numbers,
    lists and mappings) with two changes: a float is the Decimal its text says (7.5 is
    Decimal("7.5"); a float would round 1234567890.12345678), and a key written twice
    in one mapping is an error, where PyYAML would keep the last silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"found {key_node.value!r} twice",
                        key_node.start_mark,
                    )  # fmt: skip
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _decimal(loader: _Loader, node: yaml.ScalarNode) -> Decimal | float:
    text = loader.construct_scalar(node).replace("_", "")
    try:
        return Decimal(text)
    except InvalidOperation:  # .inf, .nan, base 60 (1:30.5): PyYAML's float, refused as a price
        return loader.construct_yaml_float(node)


_Loader.add_constructor("tag:yaml.org,2002:float", _decimal)


def models_file_load(text: str) -> Any:
    """A models file's YAML as plain data (numbers with a fraction as Decimal)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _count(items: list, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def summary(changes: Changes) -> str:
    parts = [
        f"upstreams: {len(changes.upstreams_created)} created, {len(changes.upstreams_updated)} updated, "
        f"{len(changes.upstreams_unchanged)} unchanged",
        f"prices: {_count(changes.prices_new, 'new row', 'new rows')}, {len(changes.prices_unchanged)} unchanged",
        f"deployments: {_count(changes.deployments_changed, 'alias', 'aliases')} changed",
    ]
    if changes.aliases_pruned or changes.upstreams_pruned:
        parts.append(
            f"pruned: {_count(changes.aliases_pruned, 'alias', 'aliases')}, {_count(changes.upstreams_pruned, 'upstream', 'upstreams')}"
        )
    text = "; ".join(parts) + "."
    if not changes.changed:
        text = "Nothing to change (" + text[:-1] + ")."
    return text + (" Dry run: nothing written." if changes.dry_run else "")


class Command(BaseCommand):
    help = (
        "Make the upstreams, prices and deployments what FILE (a models file, YAML: docs/models-file.md) says, "
        "in one transaction. Running it again changes nothing; a changed price is a new price row (the old one "
        "kept, inactive). Upstreams and aliases the file leaves out are left alone unless --prune. A bad file "
        "is refused whole, every problem named, and nothing is written."
    )

    def add_arguments(self, parser) -> None:  # noqa: ANN001
        parser.add_argument("file", help="The models file (YAML), e.g. docs/models.example.yaml.")
        parser.add_argument(
            "--prune", action="store_true",
            help="Also remove what the file leaves out: an alias's active price is deactivated and its deployments "
            "deleted; an upstream is deleted (an error while deployments use it; the default openai, anthropic "
            "and local stay while an active price names them as its provider).",
        )  # fmt: skip
        parser.add_argument("--dry-run", action="store_true", help="Print the changes and write nothing.")

    def handle(self, *args, file: str, prune: bool, dry_run: bool, **options) -> None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{file}: cannot be read: {exc}")
        try:
            data = models_file_load(text)
        except yaml.YAMLError as exc:
            raise CommandError(f"{file}: not valid YAML, nothing was written: {exc}")
        try:
            changes = models_file_apply(data, prune=prune, dry_run=dry_run)
        except ApplicationError as exc:
            raise CommandError(f"{file}: refused, nothing was written:\n{exc.message}")
        for line in changes.lines:
            self.stdout.write(line)
        for note in changes.notes:
            self.stdout.write(f"note: {note}")
        self.stdout.write(summary(changes))
