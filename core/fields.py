"""Serializer fields of the project's own."""

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A text field that takes only a JSON string. DRF's own CharField turns a number
    or a boolean into text (`{"content": 123}` became "123"); the API promises
    strings, so anything else is a 400 naming the field."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data: object) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)
