from rest_framework.pagination import CursorPagination, PageNumberPagination


class DefaultPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class NewestFirstCursorPagination(CursorPagination):
    """Stable under concurrent inserts: a new row never shifts a page already read."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


# Largest id a BigAutoField holds: the bound for ids taken from query strings and
# tool arguments, so an out-of-range number is a 400 (or "not found"), never a 500.
BIGINT_MAX = 2**63 - 1
