from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination

MAX_PAGE_SIZE = 200


class CappedCursorPagination(CursorPagination):
    """Cursor pagination whose page_size is a whole number >= 1, capped at MAX_PAGE_SIZE.

    DRF quietly falls back to the default page size on a malformed value; here it answers
    400 INVALID_REQUEST instead, so a typo is not mistaken for "there is no more".
    """

    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def get_page_size(self, request) -> int:
        values = request.query_params.getlist(self.page_size_query_param)
        if not values:
            return self.page_size
        raw = values[-1].strip()
        if len(values) > 1 or not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValidationError(
                {self.page_size_query_param: ["A whole number of at least 1 is required."]}
            )
        return min(int(raw), self.max_page_size)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
                parameter["description"] = (
                    f"Results per page; larger values are capped at {self.max_page_size}."
                )
        return parameters


class NewestFirstCursorPagination(CappedCursorPagination):
    """Cursor pagination, newest first: stable under inserts and O(page) at any depth."""

    ordering = ("-created_at", "-id")
