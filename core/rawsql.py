"""Model instances from one raw statement that reads several tables: what the ORM's
select_related does, without building a query. Building and compiling an ORM query
costs far more than running it on the turn hot path (a turn with its session, user
and price: 214 us this way against 979 us through select_related, bench/sql_chat.py),
and Model.raw reads one model per statement.

A statement lists each model's columns with `columns()`, in the order the models are
then given to `fetch()` (or names a model's fields for `fetch_values()`); the values
go through the same converters the ORM applies (JSON decoding; on SQLite, dates,
decimals, UUIDs and booleans).
"""

from collections.abc import Sequence
from weakref import WeakKeyDictionary

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model
from django.db.models.expressions import Col

# Per database wrapper (each thread has its own): (model, names) -> converters.
_converters: WeakKeyDictionary = WeakKeyDictionary()


def columns(model: type[Model], alias: str) -> str:
    """The SELECT list of `model`'s concrete fields, in their declared order."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


def _converters_of(
    connection: BaseDatabaseWrapper, model: type[Model], names: tuple[str, ...] | None = None
) -> list[tuple[int, list, Col]]:
    """(index, converters, column) of each field that has converters, of `model`'s
    concrete fields or of the fields `names`, in that order."""
    known = _converters.setdefault(connection, {})
    if (model, names) not in known:
        fields = model._meta.concrete_fields if names is None else [model._meta.get_field(name) for name in names]
        found = []
        for index, field in enumerate(fields):
            # As the ORM's compiler: a foreign key's column reads as its target field.
            column = field.get_col(model._meta.db_table)
            converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            if converters:
                found.append((index, converters, column))
        known[model, names] = found
    return known[model, names]


def _converted(connection: BaseDatabaseWrapper, converters: list, values: Sequence) -> list:
    values = list(values)
    for index, functions, column in converters:
        for convert in functions:
            values[index] = convert(values[index], column, connection)
    return values


def _instances(connection: BaseDatabaseWrapper, row: Sequence, models: Sequence[type[Model]]) -> list[Model | None]:
    found, start = [], 0
    for model in models:
        end = start + len(model._meta.concrete_fields)
        values = row[start:end]
        if values[model._meta.concrete_fields.index(model._meta.pk)] is None:  # an outer join found nothing
            found.append(None)
        else:
            converted = _converted(connection, _converters_of(connection, model), values)
            found.append(model.from_db(connection.alias, None, converted))
        start = end
    return found


def fetch(sql: str, params: Sequence, models: Sequence[type[Model]]) -> list[list[Model | None]]:
    """Every row of `sql`, whose columns are each model's `columns()` in turn, as the
    instances of `models` (None for a model whose primary key is NULL: an outer join
    that found nothing)."""
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [_instances(connection, row, models) for row in rows]


def fetch_values(sql: str, params: Sequence, model: type[Model], names: tuple[str, ...]) -> list[dict]:
    """Every row of `sql`, whose columns are `model`'s fields `names`, as a dict by
    name, as QuerySet.values(*names) gives it."""
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    converters = _converters_of(connection, model, names)
    if not converters:
        return [dict(zip(names, row, strict=True)) for row in rows]
    return [dict(zip(names, _converted(connection, converters, row), strict=True)) for row in rows]
