"""Invitations through the API with real keys: an owner or admin invites by email, the
single-use link goes only by email, and the person it was sent to accepts it once,
before it expires and unless it was withdrawn (422 naming why otherwise)."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import all_scopes
from organizations.models import Invitation, Membership, Role
from tests.conftest import client_for, make_user
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db

LINK = re.compile(r"/api/v1/orgs/invitations/([\w-]+)")


@pytest.fixture
def invite(org, owner, mailoutbox, django_capture_on_commit_callbacks):  # noqa: ANN001, ANN201
    """Invites `email` as `role` through the owner's key (the email sent as on commit);
    returns the answer and the token the email carries."""
    client = client_for(owner)

    def _invite(email: str, role: str = Role.MEMBER, by=client):  # noqa: ANN001, ANN202
        sent = len(mailoutbox)
        with django_capture_on_commit_callbacks(execute=True):
            response = by.post(f"/api/v1/orgs/{org.pk}/invitations", {"email": email, "role": role}, format="json")
        if response.status_code != 201:
            return response, None
        assert len(mailoutbox) == sent + 1
        return response, LINK.search(mailoutbox[-1].body).group(1)

    return _invite


def test_an_invitation_goes_by_email_and_joins_once(org, owner, invite, mailoutbox):
    ada = make_user("ada@example.com")
    response, token = invite("ada@example.com")
    body = response.json()
    assert (body["email"], body["role"], body["invited_by"], body["state"]) == (
        "ada@example.com", "member", "owner@example.com", "open",
    )  # fmt: skip
    assert token not in response.content.decode() and "token" not in body
    mail = mailoutbox[-1]
    assert mail.to == ["ada@example.com"] and "Acme" in mail.subject
    ada_client = client_for(ada)

    preview = ada_client.get(f"/api/v1/orgs/invitations/{token}")
    assert preview.status_code == 200
    assert preview.json() | {"expires_at": None} == {
        "organization": "Acme", "organization_slug": "acme", "email": "ada@example.com", "role": "member",
        "invited_by": "owner@example.com", "expires_at": None, "state": "open",
    }  # fmt: skip

    accepted = ada_client.post(f"/api/v1/orgs/invitations/{token}")
    assert accepted.status_code == 201, accepted.content
    membership = Membership.objects.get(organization=org, user=ada)
    assert accepted.json()["id"] == membership.pk
    assert (accepted.json()["organization_id"], accepted.json()["role"]) == (org.pk, "member")

    again = ada_client.post(f"/api/v1/orgs/invitations/{token}")
    assert again.status_code == 422
    assert "already accepted" in again.json()["error"]["message"]
    assert ada_client.get(f"/api/v1/orgs/invitations/{token}").json()["state"] == "accepted"
    emails = [row["email"] for row in client_for(owner).get(f"/api/v1/orgs/{org.pk}/members").json()["results"]]
    assert emails == ["owner@example.com", "ada@example.com"]
    listed = client_for(owner).get(f"/api/v1/orgs/{org.pk}/invitations").json()["results"]
    assert [(row["email"], row["state"]) for row in listed] == [("ada@example.com", "accepted")]


def test_another_account_cannot_accept_it(org, invite):
    _, token = invite("ada@example.com")
    response = client_for(make_user("eve@example.com")).post(f"/api/v1/orgs/invitations/{token}")
    assert response.status_code == 422
    assert "for ada@example.com" in response.json()["error"]["message"]
    assert not Membership.objects.filter(user__email="eve@example.com").exists()


def test_an_expired_invitation_is_422(org, invite):
    ada = make_user("ada@example.com")
    _, token = invite("ada@example.com")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client_for(ada).post(f"/api/v1/orgs/invitations/{token}")
    assert response.status_code == 422
    assert "expired" in response.json()["error"]["message"]
    assert client_for(ada).get(f"/api/v1/orgs/invitations/{token}").json()["state"] == "expired"


def test_a_withdrawn_invitation_is_422(org, owner, invite):
    ada = make_user("ada@example.com")
    response, token = invite("ada@example.com")
    withdrawn = client_for(owner).delete(f"/api/v1/orgs/{org.pk}/invitations/{response.json()['id']}")
    assert withdrawn.status_code == 200 and withdrawn.json()["state"] == "withdrawn"
    refused = client_for(ada).post(f"/api/v1/orgs/invitations/{token}")
    assert refused.status_code == 422
    assert "withdrawn" in refused.json()["error"]["message"]


def test_a_new_invitation_withdraws_the_earlier_link(org, invite):
    ada = make_user("ada@example.com")
    _, first = invite("ada@example.com")
    _, second = invite("ada@example.com")
    assert client_for(ada).post(f"/api/v1/orgs/invitations/{first}").status_code == 422
    assert client_for(ada).post(f"/api/v1/orgs/invitations/{second}").status_code == 201


def test_an_unknown_link_is_404(db, owner):
    assert client_for(owner).get("/api/v1/orgs/invitations/nope").status_code == 404
    assert client_for(owner).post("/api/v1/orgs/invitations/nope").status_code == 404


def test_only_owners_and_admins_invite_and_only_owners_invite_owners(org, invite):
    member = member_add(org, "bob@example.com")
    response, _ = invite("x@example.com", by=client_for(member.user))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "role_required"
    assert "owner or admin role" in response.json()["error"]["message"]
    assert client_for(member.user).get(f"/api/v1/orgs/{org.pk}/invitations").status_code == 403

    admin = member_add(org, "carol@example.com", Role.ADMIN)
    response, _ = invite("x@example.com", Role.OWNER, by=client_for(admin.user))
    assert response.status_code == 403
    assert "needs the owner role" in response.json()["error"]["message"]
    response, token = invite("x@example.com", Role.ADMIN, by=client_for(admin.user))
    assert response.status_code == 201 and token
    assert not Invitation.objects.filter(role=Role.OWNER).exists()


def test_inviting_a_member_or_bad_input_is_refused(org, invite):
    member_add(org, "bob@example.com")
    response, _ = invite("bob@example.com")
    assert response.status_code == 422
    assert "already a member" in response.json()["error"]["message"]
    response, _ = invite("not an email")
    assert response.status_code == 400 and "email" in response.json()["error"]["fields"]
    response, _ = invite("x@example.com", "boss")
    assert response.status_code == 400 and "role" in response.json()["error"]["fields"]


def test_another_organizations_invitation_is_404(org, owner, invite):
    response, _ = invite("ada@example.com")
    stranger = make_user("eve@example.com")
    client = client_for(stranger, scopes=all_scopes())
    other = client.post("/api/v1/orgs", {"name": "Globex"}, format="json").json()["id"]
    invitation_id = response.json()["id"]
    assert client.delete(f"/api/v1/orgs/{org.pk}/invitations/{invitation_id}").status_code == 404
    assert client.get(f"/api/v1/orgs/{other}/invitations/{invitation_id}").status_code == 404
    assert client.delete(f"/api/v1/orgs/{other}/invitations/{invitation_id}").status_code == 404
    assert Invitation.objects.get(pk=invitation_id).revoked_at is None


def test_an_organizations_key_cannot_accept(org, invite):
    _, token = invite("ada@example.com")
    member = member_add(org, "bob@example.com")
    response = client_for(org.account, membership=member).post(f"/api/v1/orgs/invitations/{token}")
    assert response.status_code == 403
    assert "this is organization 'Acme''s key" in response.json()["error"]["message"]


def test_an_invitation_token_never_reaches_the_log():
    """django.request logs a 4xx with its path; the link's token is replaced first,
    by the filter on the configured handler (what production writes)."""
    import logging

    from django.conf import settings

    assert "redact_secret_paths" in settings.LOGGING["handlers"]["console"]["filters"]
    handler = next(h for h in logging.getLogger().handlers if any(
        type(f).__name__ == "RedactSecretPaths" for f in h.filters))  # fmt: skip
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "%s: %s",
                               ("Unprocessable Entity", "/api/v1/orgs/invitations/s3cretT0ken-_x"), None)  # fmt: skip
    assert handler.filter(record)
    logged = handler.format(record)
    assert "/api/v1/orgs/invitations/[redacted]" in logged and "s3cretT0ken" not in logged
