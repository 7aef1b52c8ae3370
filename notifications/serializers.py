from rest_framework import serializers

from notifications.models import Notification


class NotificationSerializer(serializers.ModelSerializer):
    data = serializers.DictField(read_only=True, help_text="For low_balance: balance and threshold, in credits.")

    class Meta:
        model = Notification
        fields = ["id", "kind", "message", "data", "created_at"]
        read_only_fields = fields
