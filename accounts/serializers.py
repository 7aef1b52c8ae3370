from django.contrib.auth.password_validation import validate_password
from rest_framework import serializers

from accounts.models import ApiKey, User
from core.fields import StrictCharField


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "is_staff", "date_joined"]
        read_only_fields = fields


class RegisterSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = StrictCharField(min_length=8, max_length=128, write_only=True)
    key_name = StrictCharField(max_length=100, required=False, default="default")

    def validate_password(self, value: str) -> str:
        validate_password(value)
        return value


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret, shown only this once.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class RegisteredSerializer(serializers.Serializer):
    user = UserSerializer()
    api_key = ApiKeyCreatedSerializer()
