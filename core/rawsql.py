"""Model instances from one raw statement that reads several tables (what the ORM's
select_related does), and plain INSERTs and UPDATEs of instances, without building a
query. Building and compiling an ORM query costs far more than running it on the
turn hot path (bench/sql_chat.py, CPU per call: a turn with its session, user and
price 182 us this way against 875 us through select_related; the accepted turn and
its message inserted 395 against 557 us; a finished turn's update 117 against
307 us), and Model.raw reads one model per statement.

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


def insert(objs: Sequence[Model]) -> None:
    """INSERTs `objs` (instances of one model) as bulk_create does (each field's
    pre_save, so auto_now_add; a database-made primary key read back with RETURNING;
    batches the database's parameter limit allows), without building a query. Sends
    no signals, as bulk_create."""
    if not objs:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    meta, quote = type(objs[0])._meta, connection.ops.quote_name
    for obj in objs:  # a foreign key to an instance saved since it was set (bulk_create's own step)
        obj._prepare_related_fields_for_save(operation_name="insert")  # noqa: SLF001
    fields = [field for field in meta.concrete_fields if not (field.primary_key and field.db_returning)]
    returning = meta.pk not in fields
    head = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) VALUES "  # noqa: S608  names from the model
    row = f"({', '.join(['%s'] * len(fields))})"
    tail = f" RETURNING {quote(meta.pk.column)}" if returning else ""
    size = max(connection.ops.bulk_batch_size(fields, objs), 1)
    for start in range(0, len(objs), size):
        batch = objs[start : start + size]
        params = [field.get_db_prep_save(field.pre_save(obj, True), connection) for obj in batch for field in fields]
        with connection.cursor() as cursor:
            cursor.execute(head + ", ".join([row] * len(batch)) + tail, params)
            # Rows come back in the order of VALUES (PostgreSQL and SQLite both keep it).
            keys = [key for (key,) in cursor.fetchall()] if returning else []
        for index, obj in enumerate(batch):
            if returning:
                setattr(obj, meta.pk.attname, keys[index])
            obj._state.adding, obj._state.db = False, connection.alias


def update(obj: Model, names: Sequence[str]) -> None:
    """UPDATE of `obj`'s fields `names` by its primary key: save(update_fields=names)
    without building a query (no signals)."""
    connection = connections[DEFAULT_DB_ALIAS]
    meta = type(obj)._meta
    fields = [meta.get_field(name) for name in names]
    assignments = ", ".join(f"{connection.ops.quote_name(field.column)} = %s" for field in fields)
    params = [field.get_db_prep_save(field.pre_save(obj, False), connection) for field in fields]
    pk = meta.pk.get_db_prep_value(obj.pk, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {assignments} "  # noqa: S608  names from the model
            f"WHERE {connection.ops.quote_name(meta.pk.column)} = %s",
            [*params, pk],
        )
