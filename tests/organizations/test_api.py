"""`/api/v1/orgs/...` with real keys: organizations, members and their roles and
budgets, the organization's keys and its spending cap. Another organization's
objects are 404; a member's attempt at a manager's action is 403 naming the role; an
organization's own key is 403 here, and on the personal endpoints does only what its
member may."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import ApiKey, EndUser, all_scopes
from organizations.models import Membership, Role
from tests.conftest import client_for, make_user
from tests.organizations.conftest import member_add

pytestmark = pytest.mark.django_db

KEYS = ["chat", "openai", "keys"]


def url(org, tail: str = "") -> str:  # noqa: ANN001
    return f"/api/v1/orgs/{org.pk}{tail}"


def assert_role_required(response, role: str) -> None:  # noqa: ANN001
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "role_required"
    assert f"needs the {role} role in organization 'Acme'" in error["message"]


def assert_lacks_keys_scope(response) -> None:  # noqa: ANN001
    assert response.status_code == 403, response.content
    assert "lacks the 'keys' scope" in response.json()["error"]["message"]


@pytest.fixture
def owner_keys(owner):  # noqa: ANN001, ANN201
    """The owner's personal key with every scope."""
    return client_for(owner, scopes=all_scopes())


@pytest.fixture
def ada(org) -> Membership:  # noqa: ANN001
    return member_add(org, "ada@example.com")


@pytest.fixture
def carol(org) -> Membership:  # noqa: ANN001
    return member_add(org, "carol@example.com", Role.ADMIN)


# --- organizations ---------------------------------------------------------------------


def test_making_an_organization_makes_me_its_owner(owner, org):
    client = client_for(owner)
    response = client.post("/api/v1/orgs", {"name": "Globex Corp"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["slug"], body["role"], body["members"]) == ("Globex Corp", "globex-corp", "owner", 1)
    assert (body["balance"], body["held"], body["available"]) == ("0.00000000",) * 3

    listed = client.get("/api/v1/orgs").json()["results"]
    assert [(row["name"], row["role"], row["balance"]) for row in listed] == [
        ("Acme", "owner", "100.00000000"), ("Globex Corp", "owner", "0.00000000"),
    ]  # fmt: skip
    taken = client.post("/api/v1/orgs", {"name": "Other", "slug": "acme"}, format="json")
    assert taken.status_code == 400 and "slug" in taken.json()["error"]["fields"]
    assert client.post("/api/v1/orgs", {}, format="json").json()["error"]["fields"].keys() == {"name"}


def test_any_member_sees_the_balance_only_managers_rename(org, ada, carol):
    response = client_for(ada.user).get(url(org))
    assert response.status_code == 200
    assert {k: response.json()[k] for k in ("name", "role", "balance", "held", "available", "members")} == {
        "name": "Acme", "role": "member", "balance": "100.00000000", "held": "0.00000000",
        "available": "100.00000000", "members": 3,
    }  # fmt: skip
    assert_role_required(client_for(ada.user).patch(url(org), {"name": "Mine"}, format="json"), "owner or admin")
    renamed = client_for(carol.user).patch(url(org), {"name": "Acme Ltd"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Acme Ltd"


# --- members and roles -------------------------------------------------------------------


def test_members_list_their_roles_and_budgets(org, owner, ada):
    response = client_for(ada.user).get(url(org, "/members"))
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [(row["email"], row["role"], row["budget_credits"], row["spent"]) for row in rows] == [
        ("owner@example.com", "owner", None, None), ("ada@example.com", "member", None, None),
    ]  # fmt: skip
    assert rows[1]["id"] == ada.pk and rows[1]["user_id"] == ada.user_id


def test_roles_follow_the_owner_rules(org, owner, owner_keys, ada, carol):
    me = org.memberships.get(user=owner)
    admin = client_for(carol.user, scopes=KEYS)
    # An admin cannot make, demote or remove an owner.
    assert_role_required(admin.patch(url(org, f"/members/{ada.pk}"), {"role": "owner"}, format="json"), "owner")
    assert_role_required(admin.patch(url(org, f"/members/{me.pk}"), {"role": "member"}, format="json"), "owner")
    assert_role_required(admin.delete(url(org, f"/members/{me.pk}")), "owner")
    # A member changes nobody's role, not even their own.
    member = client_for(ada.user, scopes=KEYS)
    assert_role_required(member.patch(url(org, f"/members/{ada.pk}"), {"role": "admin"}, format="json"),
                         "owner or admin")  # fmt: skip
    # The last owner can be neither demoted nor removed.
    demoted = owner_keys.patch(url(org, f"/members/{me.pk}"), {"role": "admin"}, format="json")
    assert demoted.status_code == 422 and "always has an owner" in demoted.json()["error"]["message"]
    assert owner_keys.delete(url(org, f"/members/{me.pk}")).status_code == 422
    # Another owner first; then the first may step down.
    promoted = owner_keys.patch(url(org, f"/members/{ada.pk}"), {"role": "owner"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["role"] == "owner"
    assert owner_keys.patch(url(org, f"/members/{me.pk}"), {"role": "admin"}, format="json").json()["role"] == "admin"
    assert Membership.objects.get(pk=me.pk).role == "admin"
    bad = owner_keys.patch(url(org, f"/members/{ada.pk}"), {"role": "boss"}, format="json")
    assert bad.status_code == 400 and "role" in bad.json()["error"]["fields"]


def test_a_member_may_leave_but_not_remove_others(org, ada, carol):
    bob = member_add(org, "bob@example.com")
    assert_role_required(client_for(ada.user).delete(url(org, f"/members/{bob.pk}")), "owner or admin")
    left = client_for(ada.user).delete(url(org, f"/members/{ada.pk}"))
    assert left.status_code == 200 and left.json()["removed_at"] is not None
    assert client_for(carol.user).delete(url(org, f"/members/{bob.pk}")).status_code == 200
    assert list(org.memberships.filter(removed_at__isnull=True).values_list("user__email", flat=True)) == [
        "owner@example.com", "carol@example.com",
    ]  # fmt: skip


def test_member_budgets_need_a_manager_and_the_keys_scope(org, owner, owner_keys, ada):
    budget = {"budget_credits": "5", "budget_window": "day"}
    assert_role_required(client_for(ada.user, scopes=KEYS).patch(url(org, f"/members/{ada.pk}"), budget,
                                                                   format="json"), "owner or admin")  # fmt: skip
    assert_lacks_keys_scope(client_for(owner).patch(url(org, f"/members/{ada.pk}"), budget, format="json"))
    ada.refresh_from_db()
    assert ada.budget_credits is None
    # A role alone needs no `keys` scope (it raises nothing keys may spend).
    assert client_for(owner).patch(url(org, f"/members/{ada.pk}"), {"role": "member"}, format="json").status_code == 200

    response = owner_keys.patch(url(org, f"/members/{ada.pk}"), budget, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["budget_credits"], body["budget_window"], body["spent"], body["held"]) == (
        "5.00000000", "day", "0.00000000", "0.00000000",
    )  # fmt: skip
    assert body["resets_at"] is not None
    ada.refresh_from_db()
    assert (ada.budget_credits, ada.budget_window) == (Decimal("5"), "day")
    negative = owner_keys.patch(url(org, f"/members/{ada.pk}"), {"budget_credits": "-1"}, format="json")
    assert negative.status_code == 400 and "budget_credits" in negative.json()["error"]["fields"]
    cleared = owner_keys.patch(url(org, f"/members/{ada.pk}"), {"budget_credits": None}, format="json")
    assert cleared.json()["budget_credits"] is None and cleared.json()["spent"] is None


# --- the organization's keys ---------------------------------------------------------------


def test_members_make_their_own_keys_managers_see_all(org, owner, ada, carol):
    bob = member_add(org, "bob@example.com")
    assert_lacks_keys_scope(client_for(ada.user).post(url(org, "/keys"), {"name": "x"}, format="json"))
    made = client_for(ada.user, scopes=KEYS).post(url(org, "/keys"), {"name": "ada's ci", "rpm": 10}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["key"].startswith(body["prefix"])
    assert (body["member_id"], body["member_email"], body["rpm"], body["scopes"]) == (
        ada.pk, "ada@example.com", 10, ["chat", "openai"],
    )  # fmt: skip
    api_key = ApiKey.objects.get(pk=body["id"])
    assert (api_key.user_id, api_key.membership_id) == (org.account_id, ada.pk)
    bob_key = client_for(bob.user, scopes=KEYS).post(url(org, "/keys"), {"name": "bob's"}, format="json").json()

    me = APIClient(HTTP_AUTHORIZATION=f"Bearer {body['key']}").get("/api/v1/users/me").json()
    assert (me["kind"], me["organization"]["name"], me["member"]["id"], me["member"]["email"]) == (
        "organization", "Acme", ada.pk, "ada@example.com",
    )  # fmt: skip

    all_keys = client_for(carol.user).get(url(org, "/keys")).json()["results"]
    assert {row["name"] for row in all_keys} == {"ada's ci", "bob's"}
    own = client_for(ada.user).get(url(org, "/keys")).json()["results"]
    assert [row["name"] for row in own] == ["ada's ci"]
    assert client_for(ada.user).get(url(org, f"/keys/{bob_key['id']}")).status_code == 404
    assert client_for(ada.user).delete(url(org, f"/keys/{bob_key['id']}")).status_code == 404
    assert client_for(carol.user).get(url(org, f"/keys/{bob_key['id']}")).json()["member_email"] == "bob@example.com"

    # Limits: owners and admins, with the keys scope.
    limits = {"budget_credits": "1", "budget_window": "month"}
    assert_role_required(client_for(ada.user, scopes=KEYS).patch(url(org, f"/keys/{api_key.pk}"), limits,
                                                                   format="json"), "owner or admin")  # fmt: skip
    assert_lacks_keys_scope(client_for(carol.user).patch(url(org, f"/keys/{api_key.pk}"), limits, format="json"))
    changed = client_for(carol.user, scopes=KEYS).patch(url(org, f"/keys/{api_key.pk}"), limits, format="json")
    assert changed.status_code == 200 and changed.json()["budget_credits"] == "1.00000000"

    # The member revokes their own key; an admin any.
    assert client_for(ada.user).delete(url(org, f"/keys/{api_key.pk}")).json()["revoked_at"] is not None
    assert client_for(carol.user).delete(url(org, f"/keys/{bob_key['id']}")).json()["revoked_at"] is not None


def test_removing_a_member_revokes_their_keys(org, owner, ada):
    raw = client_for(ada.user, scopes=KEYS).post(url(org, "/keys"), {"name": "ci"}, format="json").json()["key"]
    org_key = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert org_key.get("/api/v1/users/me").status_code == 200
    assert client_for(owner).delete(url(org, f"/members/{ada.pk}")).status_code == 200
    assert org_key.get("/api/v1/users/me").status_code == 401
    assert client_for(ada.user).get(url(org)).status_code == 404  # no longer theirs to see


def test_another_organizations_objects_are_404(org, owner, ada):
    api_key = client_for(ada.user, scopes=KEYS).post(url(org, "/keys"), {"name": "ci"}, format="json").json()
    eve = make_user("eve@example.com")
    eve_client = client_for(eve, scopes=all_scopes())
    globex = eve_client.post("/api/v1/orgs", {"name": "Globex"}, format="json").json()["id"]
    # Acme's objects asked of Acme by a stranger, and of Globex by its owner.
    for prefix in (url(org), f"/api/v1/orgs/{globex}"):
        for tail in ("", "/members", f"/members/{ada.pk}", "/invitations", "/keys", f"/keys/{api_key['id']}",
                     "/limits"):  # fmt: skip
            response = eve_client.get(prefix + tail)
            expected = 200 if prefix.endswith(str(globex)) and tail in ("", "/members", "/invitations", "/keys",
                                                                        "/limits") else 404  # fmt: skip
            assert response.status_code == expected, (prefix + tail, response.content)
    assert eve_client.patch(url(org), {"name": "Mine"}, format="json").status_code == 404
    assert eve_client.delete(f"/api/v1/orgs/{globex}/members/{ada.pk}").status_code == 404
    assert eve_client.delete(f"/api/v1/orgs/{globex}/keys/{api_key['id']}").status_code == 404
    assert eve_client.patch(f"/api/v1/orgs/{globex}/keys/{api_key['id']}", {"rpm": 1}, format="json").status_code == 404
    assert ApiKey.objects.get(pk=api_key["id"]).revoked_at is None


def test_an_organizations_key_is_refused_here(org, ada):
    org_key = client_for(org.account, membership=ada, scopes=KEYS)
    for response in (org_key.get("/api/v1/orgs"), org_key.get(url(org)),
                     org_key.post("/api/v1/orgs", {"name": "x"}, format="json")):  # fmt: skip
        assert response.status_code == 403
        assert response.json()["error"]["message"] == (
            "Organization endpoints take a person's API key; this is organization 'Acme''s key."
        )


# --- an organization's key on the personal endpoints --------------------------------------


def test_an_org_key_makes_keys_for_the_same_member(org, ada):
    org_key = client_for(org.account, membership=ada, scopes=KEYS)
    response = org_key.post("/api/v1/auth/keys", {"name": "made by an org key"}, format="json")
    assert response.status_code == 201, response.content
    made = ApiKey.objects.get(pk=response.json()["id"])
    assert (made.user_id, made.membership_id) == (org.account_id, ada.pk)


def test_a_members_org_key_does_only_what_the_member_may(org, owner, ada, carol):
    ada_key = client_for(org.account, membership=ada, scopes=KEYS)
    carol_key = client_for(org.account, membership=carol, scopes=KEYS)
    ada_own = ApiKey.objects.filter(membership=ada).get()
    carol_own = ApiKey.objects.filter(membership=carol).get()

    assert [row["id"] for row in ada_key.get("/api/v1/users/me/keys").json()["results"]] == [ada_own.pk]
    assert {row["id"] for row in carol_key.get("/api/v1/users/me/keys").json()["results"]} == {
        ada_own.pk, carol_own.pk,
    }  # fmt: skip
    assert ada_key.delete(f"/api/v1/users/me/keys/{carol_own.pk}").status_code == 404
    assert_role_required(ada_key.patch(f"/api/v1/users/me/keys/{ada_own.pk}", {"budget_credits": "100"},
                                       format="json"), "owner or admin")  # fmt: skip
    assert_role_required(ada_key.patch("/api/v1/users/me/limits", {"spend_cap_credits": "1"}, format="json"),
                         "owner or admin")  # fmt: skip
    assert carol_key.patch(f"/api/v1/users/me/keys/{ada_own.pk}", {"rpm": 5}, format="json").status_code == 200
    assert carol_key.patch("/api/v1/users/me/limits", {"spend_cap_credits": "50"}, format="json").status_code == 200
    org.account.refresh_from_db()
    assert org.account.spend_cap_credits == Decimal("50")
    # End users too: a member's key sees those of its own keys only.
    EndUser.objects.create(api_key=carol_own, external_id="carol's visitor")
    assert ada_key.get("/api/v1/users/me/end-users").json()["results"] == []
    assert len(carol_key.get("/api/v1/users/me/end-users").json()["results"]) == 1
    # Ada's key still revokes itself.
    assert ada_key.delete(f"/api/v1/users/me/keys/{ada_own.pk}").status_code == 200


# --- the organization's spending cap ---------------------------------------------------------


def test_limits_any_member_reads_managers_set_with_the_keys_scope(org, owner, owner_keys, ada):
    response = client_for(ada.user).get(url(org, "/limits"))
    assert response.status_code == 200
    assert response.json() == {"spend_cap_credits": None, "spend_cap_window": None, "spent": None, "held": None,
                               "resets_at": None}  # fmt: skip
    cap = {"spend_cap_credits": "20", "spend_cap_window": "week"}
    assert_role_required(client_for(ada.user, scopes=KEYS).patch(url(org, "/limits"), cap, format="json"),
                         "owner or admin")  # fmt: skip
    assert_lacks_keys_scope(client_for(owner).patch(url(org, "/limits"), cap, format="json"))
    response = owner_keys.patch(url(org, "/limits"), cap, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["spend_cap_credits"], body["spend_cap_window"], body["spent"], body["held"]) == (
        "20.00000000", "week", "0.00000000", "0.00000000",
    )  # fmt: skip
    assert body["resets_at"] is not None
    org.account.refresh_from_db()
    owner.refresh_from_db()
    assert (org.account.spend_cap_credits, org.account.spend_cap_window) == (Decimal("20"), "week")
    assert owner.spend_cap_credits is None  # the person's own cap is untouched
    assert client_for(ada.user).get(url(org, "/limits")).json()["spend_cap_credits"] == "20.00000000"


def test_a_members_org_key_cannot_reach_the_wallets_controls_through_users_me(org, ada, carol):
    """The ledger, top-ups, auto top-up and cards of the organization are a manager's,
    on users/me/... as on orgs/{id}/...: a plain member's org key, even with `keys`,
    only sees the balance."""
    ada_key = client_for(org.account, membership=ada, scopes=KEYS)
    carol_key = client_for(org.account, membership=carol, scopes=KEYS)
    assert ada_key.get("/api/v1/users/me/wallet").status_code == 200
    for method, path, body in [
        ("get", "/api/v1/users/me/transactions", None),
        ("get", "/api/v1/users/me/top-ups", None),
        ("post", "/api/v1/users/me/wallet/top-up", {"amount_usd": "10.00"}),
        ("put", "/api/v1/users/me/auto-top-up", {"threshold": "5", "amount_usd": "10.00"}),
        ("delete", "/api/v1/users/me/auto-top-up", None),
        ("post", "/api/v1/users/me/auto-top-up/card", {"success_url": "https://x.example/ok",
                                                         "cancel_url": "https://x.example/no"}),
    ]:  # fmt: skip
        assert_role_required(getattr(ada_key, method)(path, body, format="json"), "owner or admin")
    assert carol_key.get("/api/v1/users/me/transactions").status_code == 200
    assert carol_key.get("/api/v1/users/me/top-ups").status_code == 200
    assert carol_key.delete("/api/v1/users/me/auto-top-up").status_code == 200


def test_a_plain_member_sees_only_their_own_spend_in_the_members_list(org, owner, ada, carol):
    from decimal import Decimal

    from organizations.services import member_budget_set

    for member in (ada, carol):
        member_budget_set(member=member, budget_credits=Decimal("5"), budget_window="day")
    seen_by_ada = {row["email"]: row["spent"] for row in client_for(ada.user).get(url(org, "/members")).json()["results"]}
    assert seen_by_ada == {"owner@example.com": None, "ada@example.com": "0.00000000", "carol@example.com": None}
    assert client_for(ada.user).get(url(org, f"/members/{carol.pk}")).json()["spent"] is None
    seen_by_carol = {row["email"]: row["spent"] for row in client_for(carol.user).get(url(org, "/members")).json()["results"]}
    assert seen_by_carol["ada@example.com"] == "0.00000000"  # an admin sees everyone's
