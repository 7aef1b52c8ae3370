"""Usage query parameters and answers. Credits are written through billing.money's
`format_usage` (4 places, a string), never as a float."""

from rest_framework import serializers

from accounts.models import User
from billing.fields import MoneyField
from core.pagination import BIGINT_MAX
from organizations.models import Membership, Organization
from reporting.selectors import BUCKETS, SOURCES


class UsageQuerySerializer(serializers.Serializer):
    """Query of GET users/me/usage (always the caller's own usage)."""

    model_alias = serializers.CharField(max_length=64, required=False, help_text="Only this model alias.")
    from_date = serializers.DateField(required=False, help_text="First UTC day included (YYYY-MM-DD).")
    to_date = serializers.DateField(required=False, help_text="Last UTC day included (YYYY-MM-DD).")
    bucket = serializers.ChoiceField(choices=BUCKETS, default="day", help_text="Size of the by_bucket rows.")
    source = serializers.ChoiceField(
        choices=SOURCES,
        required=False,
        help_text="Only calls of the chat API (chat), the OpenAI-compatible /v1 (openai) or its /v1/embeddings "
        "(embeddings).",
    )
    end_user = serializers.CharField(
        required=False, max_length=256,
        help_text="Only the usage of the end user the client named so (the OpenAI `user`, X-OpenWebUI-User-Id).",
    )  # fmt: skip
    end_user_id = serializers.IntegerField(
        required=False, min_value=0, max_value=BIGINT_MAX,
        help_text="Only this end user's usage (an id from GET users/me/end-users); 0: requests that named none.",
    )  # fmt: skip
    purpose = serializers.RegexField(
        r"^[A-Za-z0-9_.:-]{1,32}$", required=False, help_text="Only requests labelled with this purpose (e.g. title)."
    )
    format = serializers.ChoiceField(choices=["json", "csv"], default="json", help_text="csv: a CSV attachment.")

    def validate(self, attrs: dict) -> dict:
        start, end = attrs.get("from_date"), attrs.get("to_date")
        if start is not None and end is not None and start > end:
            raise serializers.ValidationError({"from_date": ["from_date must not be after to_date."]})
        return attrs


class _MemberFilter(serializers.Serializer):
    member = serializers.IntegerField(
        required=False, min_value=0, max_value=BIGINT_MAX, source="member_id",
        help_text="Only the usage through this organization member's keys (a membership id); 0: usage through no "
        "member's key (personal usage).",
    )  # fmt: skip


class AdminUsageQuerySerializer(_MemberFilter, UsageQuerySerializer):
    """Query of GET admin/usage/summary: the same, optionally for one user, one
    organization or one member."""

    user_id = serializers.IntegerField(
        required=False, min_value=1, max_value=BIGINT_MAX, help_text="Only this user's usage."
    )
    organization = serializers.IntegerField(
        required=False, min_value=1, max_value=BIGINT_MAX, source="organization_id",
        help_text="Only this organization's usage (an organization id): the turns through its keys.",
    )  # fmt: skip

    def validate_user_id(self, value: int) -> int:
        if not User.objects.filter(pk=value).exists():
            raise serializers.ValidationError("No user with this id.")
        return value

    def validate_organization(self, value: int) -> int:
        if not Organization.objects.filter(pk=value).exists():
            raise serializers.ValidationError("No organization with this id.")
        return value

    def validate_member(self, value: int) -> int:
        if value and not Membership.objects.filter(pk=value).exists():
            raise serializers.ValidationError("No member with this id.")
        return value


class OrgUsageQuerySerializer(UsageQuerySerializer):
    """Query of GET orgs/{org_id}/usage: the same as users/me/usage, and (for owners and
    admins) one member's usage. Needs the organization in the context."""

    member = serializers.IntegerField(
        required=False, min_value=1, max_value=BIGINT_MAX, source="member_id",
        help_text="Only this member's usage (a membership id of this organization). Owners and admins may name "
        "anyone; a member sees only their own usage, whether or not they name themselves.",
    )  # fmt: skip

    def validate_member(self, value: int) -> int:
        # Removed members included: their usage stays theirs.
        if not Membership.objects.filter(pk=value, organization=self.context["organization"]).exists():
            raise serializers.ValidationError("No member with this id in this organization.")
        return value


class UsageFiguresSerializer(serializers.Serializer):
    calls = serializers.IntegerField()
    input_tokens = serializers.IntegerField(help_text="All input tokens, the cached and cache-write ones included.")
    cached_input_tokens = serializers.IntegerField(help_text="Of input_tokens: read from the provider's cache.")
    cache_write_tokens = serializers.IntegerField(help_text="Of input_tokens: written to the provider's cache.")
    output_tokens = serializers.IntegerField(help_text="All output tokens, the reasoning ones included.")
    reasoning_tokens = serializers.IntegerField(help_text="Of output_tokens: the model's reasoning (thinking).")
    credits = MoneyField(precision="usage", help_text="Credits burned, 4 decimal places.")


class UsageByModelSerializer(UsageFiguresSerializer):
    model_alias = serializers.CharField()


class UsageByUserSerializer(UsageFiguresSerializer):
    user_id = serializers.IntegerField()
    email = serializers.CharField()


class UsageByBucketSerializer(UsageFiguresSerializer):
    bucket = serializers.DateField(help_text="First day of the bucket (the day, the ISO week's Monday, the 1st).")


class UsageBySourceSerializer(UsageFiguresSerializer):
    source = serializers.ChoiceField(
        choices=SOURCES, help_text="chat: the chat API; openai: the /v1 endpoint; embeddings: /v1/embeddings."
    )


class UsageByEndUserSerializer(UsageFiguresSerializer):
    end_user_id = serializers.IntegerField(allow_null=True, help_text="null: requests that named no end user.")
    external_id = serializers.CharField(allow_null=True, help_text="The id the client sent for them.")
    api_key_name = serializers.CharField(allow_null=True, help_text="The key whose end user they are.")


class UsageByPurposeSerializer(UsageFiguresSerializer):
    purpose = serializers.CharField(help_text='The label the client gave (X-Parley-Purpose); "": none.')


class UsageByOrganizationSerializer(UsageFiguresSerializer):
    organization_id = serializers.IntegerField(
        allow_null=True, help_text="null: personal usage (people's own accounts, through no organization's key)."
    )
    name = serializers.CharField(allow_null=True)
    slug = serializers.CharField(allow_null=True)


class UsageByMemberSerializer(UsageFiguresSerializer):
    membership_id = serializers.IntegerField(
        allow_null=True, help_text="The member whose keys the turns went through; null: no member (personal usage)."
    )
    email = serializers.CharField(allow_null=True, help_text="The member's email.")
    organization_id = serializers.IntegerField(allow_null=True)
    organization_name = serializers.CharField(allow_null=True)


class UsageSummarySerializer(serializers.Serializer):
    user_id = serializers.IntegerField(allow_null=True)
    model_alias = serializers.CharField(allow_null=True)
    from_date = serializers.DateField(allow_null=True)
    to_date = serializers.DateField(allow_null=True)
    bucket = serializers.ChoiceField(choices=BUCKETS)
    source = serializers.CharField(allow_null=True, help_text="The `source` filter asked for, if any.")
    end_user_id = serializers.IntegerField(allow_null=True, help_text="The `end_user_id` filter, if any.")
    end_user = serializers.CharField(allow_null=True, help_text="The `end_user` filter, if any.")
    purpose = serializers.CharField(allow_null=True, help_text="The `purpose` filter, if any.")
    organization_id = serializers.IntegerField(allow_null=True, help_text="The `organization` filter, if any.")
    member_id = serializers.IntegerField(allow_null=True, help_text="The `member` filter, if any.")
    totals = UsageFiguresSerializer()
    by_model = UsageByModelSerializer(many=True)
    by_user = UsageByUserSerializer(many=True)
    by_bucket = UsageByBucketSerializer(many=True)
    by_source = UsageBySourceSerializer(many=True)
    by_end_user = UsageByEndUserSerializer(many=True)
    by_purpose = UsageByPurposeSerializer(many=True)
    by_organization = UsageByOrganizationSerializer(
        many=True,
        help_text="Per organization whose keys the usage went through; personal usage is the row with a null "
        "organization_id, so the rows sum to the totals.",
    )
    by_member = UsageByMemberSerializer(
        many=True,
        help_text="Per organization member whose keys the usage went through; usage through no member's key "
        "(personal) is the row with a null membership_id.",
    )
