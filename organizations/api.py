"""`/api/v1/orgs/...`: organizations, their members, invitations, keys and spending cap.

The caller is a person with their own API key (an organization's key is 403: it
spends the wallet, it does not run the organization). Another organization and its
objects are 404 (organizations.selectors.membership_for); a member's attempt at an
owner's or admin's action is 403 naming the role it needs. Whatever raises what keys
may spend (making keys, their limits, member budgets, the cap) also needs the key's
`keys` scope (accounts.permissions.KeysScope)."""

from django.db import transaction
from django.http import Http404
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import limits_body
from accounts.models import ApiKey
from accounts.permissions import KeysScope, keys_scope_require
from accounts.serializers import (
    AccountLimitsSerializer,
    ApiKeyCreateSerializer,
    ApiKeyLimitsSerializer,
    SpendCapSerializer,
)
from accounts.services import api_key_limits_set, api_key_revoke, user_spend_cap_set
from billing.limits import api_keys_spend, members_spend
from organizations.models import MANAGERS, Invitation, Membership
from organizations.permissions import RoleRequired
from organizations.selectors import (
    invitations_of,
    manager_for,
    member_of,
    members_of,
    membership_for,
    organization_keys,
    organizations_of,
)
from organizations.serializers import (
    InvitationCreateSerializer,
    InvitationPreviewSerializer,
    InvitationSerializer,
    MemberSerializer,
    MembershipSerializer,
    MemberUpdateSerializer,
    OrganizationCreateSerializer,
    OrganizationKeyCreatedSerializer,
    OrganizationKeySerializer,
    OrganizationRenameSerializer,
    OrganizationSerializer,
)
from organizations.services import (
    MEMBER_BUDGET_FIELDS,
    invitation_accept,
    invitation_create,
    invitation_for_token,
    invitation_revoke,
    member_budget_set,
    member_remove,
    member_role_set,
    organization_api_key_create,
    organization_create,
    organization_rename,
)


class PersonKey(BasePermission):
    """A person's key; an organization's own key is 403 naming the organization
    (after IsAuthenticated, so a missing key stays 401)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.user.is_organization:
            raise PermissionDenied(
                "Organization endpoints take a person's API key; "
                f"this is organization '{request.user.organization.name}''s key."
            )
        return True


class OrganizationView:
    """The permissions every /orgs view shares; `keys_scope_methods` lists what
    needs the key's `keys` scope."""

    permission_classes = [IsAuthenticated, PersonKey, KeysScope]
    keys_scope_methods: tuple[str, ...] = ()


def _organization_body(request: Request, membership: Membership) -> dict:
    return OrganizationSerializer(organizations_of(user=request.user).get(pk=membership.pk)).data


def _manages_or_is(actor: Membership, member_id: int | None) -> None:
    """An owner's or admin's action, or a member's own (`member_id` theirs): 403 naming the roles otherwise."""
    if not actor.manages and actor.pk != member_id:
        raise RoleRequired(organization=actor.organization, needed=MANAGERS, role=actor.role)


# --- organizations -------------------------------------------------------------------


class OrganizationListView(OrganizationView, generics.ListAPIView):
    serializer_class = OrganizationSerializer
    queryset = Membership.objects.none()  # for the schema; requests use get_queryset

    @extend_schema(description="Your organizations, with your role and each one's balance.")
    def get(self, request: Request, *args, **kwargs) -> Response:  # noqa: ANN002, ANN003
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # noqa: ANN201
        return organizations_of(user=self.request.user)

    @extend_schema(
        request=OrganizationCreateSerializer,
        responses={201: OrganizationSerializer},
        description="Makes an organization with its own empty wallet; you are its first owner. 400 naming `slug` "
        "when it is taken.",
    )
    def post(self, request: Request) -> Response:
        serializer = OrganizationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization = organization_create(creator=request.user, **serializer.validated_data)
        membership = organization.memberships.get(user=request.user)
        return Response(_organization_body(request, membership), status=status.HTTP_201_CREATED)


class OrganizationDetailView(OrganizationView, APIView):
    @extend_schema(responses={200: OrganizationSerializer}, description="Any member.")
    def get(self, request: Request, org_id: int) -> Response:
        return Response(_organization_body(request, membership_for(user=request.user, organization_id=org_id)))

    @extend_schema(
        request=OrganizationRenameSerializer, responses={200: OrganizationSerializer},
        description="Renames the organization (its slug stays). Owners and admins.",
    )  # fmt: skip
    def patch(self, request: Request, org_id: int) -> Response:
        actor = manager_for(user=request.user, organization_id=org_id)
        serializer = OrganizationRenameSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organization_rename(organization=actor.organization, name=serializer.validated_data["name"])
        return Response(_organization_body(request, actor))


# --- members -------------------------------------------------------------------------


class MemberListView(OrganizationView, generics.ListAPIView):
    serializer_class = MemberSerializer
    queryset = Membership.objects.none()  # for the schema; requests use get_queryset

    @extend_schema(description="The organization's members with their roles and budgets. Any member.")
    def get(self, request: Request, *args, **kwargs) -> Response:  # noqa: ANN002, ANN003
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # noqa: ANN201
        self.viewer = membership_for(user=self.request.user, organization_id=self.kwargs["org_id"])
        return members_of(organization=self.viewer.organization)

    def get_serializer(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        # Every member's spend of the page in one query.
        if args:
            context = kwargs.setdefault("context", self.get_serializer_context())
            context.update(spend=members_spend(memberships=list(args[0])), viewer=self.viewer)
        return super().get_serializer(*args, **kwargs)


class MemberDetailView(OrganizationView, APIView):
    @extend_schema(responses={200: MemberSerializer}, description="Any member.")
    def get(self, request: Request, org_id: int, member_id: int) -> Response:
        membership = membership_for(user=request.user, organization_id=org_id)
        member = member_of(organization=membership.organization, member_id=member_id)
        return Response(MemberSerializer(member, context={"viewer": membership}).data)

    @extend_schema(
        request=MemberUpdateSerializer,
        responses={200: MemberSerializer},
        description="Changes a member's role or budget: only the fields sent; null clears the budget. Owners and "
        "admins; only an owner makes, demotes or removes an owner (403 naming it), and the last owner stays "
        "(422). A budget needs the key's `keys` scope (403 naming it).",
    )
    def patch(self, request: Request, org_id: int, member_id: int) -> Response:
        actor = manager_for(user=request.user, organization_id=org_id)
        member = member_of(organization=actor.organization, member_id=member_id)
        serializer = MemberUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        budget = {name: data[name] for name in MEMBER_BUDGET_FIELDS if name in data}
        if budget:
            keys_scope_require(request)
        with transaction.atomic():  # a role and a budget change together or not at all
            if "role" in data:
                member = member_role_set(actor=actor, member=member, role=data["role"])
            member = member_budget_set(member=member, **budget)
        return Response(MemberSerializer(member).data)

    @extend_schema(
        request=None,
        responses={200: MemberSerializer},
        description="Removes a member (owners and admins; only an owner removes an owner), or yourself (leaving). "
        "Their keys of the organization are revoked; their usage stays theirs. 422 for the last owner.",
    )
    def delete(self, request: Request, org_id: int, member_id: int) -> Response:
        actor = membership_for(user=request.user, organization_id=org_id)
        member = member_of(organization=actor.organization, member_id=member_id)
        _manages_or_is(actor, member.pk)
        return Response(MemberSerializer(member_remove(actor=actor, member=member)).data)


# --- invitations -----------------------------------------------------------------------


class InvitationListView(OrganizationView, generics.ListAPIView):
    serializer_class = InvitationSerializer
    queryset = Invitation.objects.none()  # for the schema; requests use get_queryset

    @extend_schema(description="The organization's invitations, newest first (never their links). Owners and admins.")
    def get(self, request: Request, *args, **kwargs) -> Response:  # noqa: ANN002, ANN003
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # noqa: ANN201
        actor = manager_for(user=self.request.user, organization_id=self.kwargs["org_id"])
        return invitations_of(organization=actor.organization)

    @extend_schema(
        request=InvitationCreateSerializer,
        responses={201: InvitationSerializer},
        description="Invites a person by email: the single-use link goes only by email, valid for 7 days; an "
        "earlier open invitation of the same address is withdrawn. Owners and admins (an owner, to invite an "
        "owner). 422 when they are already a member.",
    )
    def post(self, request: Request, org_id: int) -> Response:
        actor = manager_for(user=request.user, organization_id=org_id)
        serializer = InvitationCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        invitation, _token = invitation_create(actor=actor, **serializer.validated_data)  # the token goes by email only
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailView(OrganizationView, APIView):
    def _invitation(self, request: Request, org_id: int, invitation_id: int) -> Invitation:
        organization = manager_for(user=request.user, organization_id=org_id).organization
        invitation = invitations_of(organization=organization).filter(pk=invitation_id).first()
        if invitation is None:
            raise Http404("No such invitation.")
        return invitation

    @extend_schema(responses={200: InvitationSerializer}, description="Owners and admins.")
    def get(self, request: Request, org_id: int, invitation_id: int) -> Response:
        return Response(InvitationSerializer(self._invitation(request, org_id, invitation_id)).data)

    @extend_schema(
        request=None, responses={200: InvitationSerializer},
        description="Withdraws the invitation: its link no longer works. An accepted one stays as it is.",
    )  # fmt: skip
    def delete(self, request: Request, org_id: int, invitation_id: int) -> Response:
        invitation = invitation_revoke(invitation=self._invitation(request, org_id, invitation_id))
        return Response(InvitationSerializer(invitation).data)


class InvitationTokenView(OrganizationView, APIView):
    """The link an invitation's email carries: anyone holding it sees what it offers;
    the person it was sent to accepts it, once."""

    def _invitation(self, token: str) -> Invitation:
        invitation = invitation_for_token(token=token)
        if invitation is None:
            raise Http404("No such invitation.")
        return invitation

    @extend_schema(
        operation_id="api_v1_orgs_invitation_by_token",
        responses={200: InvitationPreviewSerializer},
        description="What accepting the invitation does. Any person's key.",
    )
    def get(self, request: Request, token: str) -> Response:
        return Response(InvitationPreviewSerializer(self._invitation(token)).data)

    @extend_schema(
        operation_id="api_v1_orgs_invitation_accept",
        request=None,
        responses={201: MembershipSerializer},
        description="Accepts the invitation: you join with its role. Once, before it expires, and only with the "
        "account of the email it was sent to; 422 naming why otherwise (used, expired, withdrawn, another email).",
    )
    def post(self, request: Request, token: str) -> Response:
        self._invitation(token)
        membership = invitation_accept(user=request.user, token=token)
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


# --- the organization's keys --------------------------------------------------------------


def _visible_keys(membership: Membership):  # noqa: ANN202
    """Owners and admins see every key of the organization; a member, the ones they made."""
    return organization_keys(
        organization=membership.organization, membership=None if membership.manages else membership
    )


def _key(membership: Membership, key_id: int) -> ApiKey:
    api_key = _visible_keys(membership).filter(pk=key_id).first()
    if api_key is None:
        raise Http404("No such key.")
    return api_key


class OrganizationKeyListView(OrganizationView, generics.ListAPIView):
    serializer_class = OrganizationKeySerializer
    queryset = ApiKey.objects.none()  # for the schema; requests use get_queryset
    keys_scope_methods = ("POST",)

    @extend_schema(
        description="The organization's keys with the member who made each and their spend: every key for owners "
        "and admins, your own for a member."
    )
    def get(self, request: Request, *args, **kwargs) -> Response:  # noqa: ANN002, ANN003
        return super().get(request, *args, **kwargs)

    def get_queryset(self):  # noqa: ANN201
        return _visible_keys(membership_for(user=self.request.user, organization_id=self.kwargs["org_id"]))

    def get_serializer(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        # Every key's spend of the page in one query.
        if args:
            kwargs.setdefault("context", self.get_serializer_context())["spend"] = api_keys_spend(
                api_keys=list(args[0])
            )
        return super().get_serializer(*args, **kwargs)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: OrganizationKeyCreatedSerializer},
        description="Makes a key of the organization for yourself (any member): it spends the organization's "
        "wallet, its turns are yours and count against your member budget. The same fields as POST auth/keys; the "
        "secret is shown once. Needs the key's `keys` scope (403 naming it).",
    )
    def post(self, request: Request, org_id: int) -> Response:
        membership = membership_for(user=request.user, organization_id=org_id)
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, raw_key = organization_api_key_create(member=membership, **serializer.validated_data)
        body = {**OrganizationKeySerializer(api_key).data, "key": raw_key}
        return Response(body, status=status.HTTP_201_CREATED)


class OrganizationKeyDetailView(OrganizationView, APIView):
    keys_scope_methods = ("PATCH",)

    @extend_schema(responses={200: OrganizationKeySerializer}, description="Owners and admins; a member, their own.")
    def get(self, request: Request, org_id: int, key_id: int) -> Response:
        membership = membership_for(user=request.user, organization_id=org_id)
        return Response(OrganizationKeySerializer(_key(membership, key_id)).data)

    @extend_schema(
        request=ApiKeyLimitsSerializer,
        responses={200: OrganizationKeySerializer},
        description="Changes the key's limits: only the fields sent; null clears a limit. 422 for a revoked key. "
        "Owners and admins, with the key's `keys` scope (403 naming either).",
    )
    def patch(self, request: Request, org_id: int, key_id: int) -> Response:
        api_key = _key(manager_for(user=request.user, organization_id=org_id), key_id)
        serializer = ApiKeyLimitsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key = api_key_limits_set(api_key=api_key, **serializer.validated_data)
        return Response(OrganizationKeySerializer(api_key).data)

    @extend_schema(
        request=None, responses={200: OrganizationKeySerializer},
        description="Revokes the key: owners and admins, or the member who made it.",
    )  # fmt: skip
    def delete(self, request: Request, org_id: int, key_id: int) -> Response:
        api_key = _key(membership_for(user=request.user, organization_id=org_id), key_id)
        return Response(OrganizationKeySerializer(api_key_revoke(api_key=api_key)).data)


# --- the organization's spending cap -------------------------------------------------------


class OrganizationLimitsView(OrganizationView, APIView):
    keys_scope_methods = ("PATCH",)

    @extend_schema(
        responses={200: AccountLimitsSerializer},
        description="The organization's spending cap over all its keys and its current window. Any member.",
    )
    def get(self, request: Request, org_id: int) -> Response:
        account = membership_for(user=request.user, organization_id=org_id).organization.account
        return Response(AccountLimitsSerializer(limits_body(account)).data)

    @extend_schema(
        request=SpendCapSerializer,
        responses={200: AccountLimitsSerializer},
        description="Sets the organization's spending cap: only the fields sent; null clears it. Owners and admins, "
        "with the key's `keys` scope (403 naming either).",
    )
    def patch(self, request: Request, org_id: int) -> Response:
        account = manager_for(user=request.user, organization_id=org_id).organization.account
        serializer = SpendCapSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        account = user_spend_cap_set(user=account, **serializer.validated_data)
        return Response(AccountLimitsSerializer(limits_body(account)).data)


urlpatterns = [
    path("orgs", OrganizationListView.as_view(), name="orgs"),
    path("orgs/invitations/<str:token>", InvitationTokenView.as_view(), name="org-invitation-token"),
    path("orgs/<int:org_id>", OrganizationDetailView.as_view(), name="org"),
    path("orgs/<int:org_id>/members", MemberListView.as_view(), name="org-members"),
    path("orgs/<int:org_id>/members/<int:member_id>", MemberDetailView.as_view(), name="org-member"),
    path("orgs/<int:org_id>/invitations", InvitationListView.as_view(), name="org-invitations"),
    path("orgs/<int:org_id>/invitations/<int:invitation_id>", InvitationDetailView.as_view(), name="org-invitation"),
    path("orgs/<int:org_id>/keys", OrganizationKeyListView.as_view(), name="org-keys"),
    path("orgs/<int:org_id>/keys/<int:key_id>", OrganizationKeyDetailView.as_view(), name="org-key"),
    path("orgs/<int:org_id>/limits", OrganizationLimitsView.as_view(), name="org-limits"),
]
