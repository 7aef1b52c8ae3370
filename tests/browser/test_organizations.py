"""The console's organization pages in headless Chromium at 1280 px: the list of
organizations, the members and invitations lists fit the screen one line per row; an
organization's page shows its members, open invitations, keys and wallet without
sideways scrolling, and leads to the grant form for its wallet. Screenshots go to
SCREENSHOT_DIR when it is set, else to the test's temporary folder (`shots/`)."""

from decimal import Decimal

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from accounts.services import user_create
from billing.models import Wallet
from billing.services import wallet_grant, wallet_hold_place
from organizations.models import Membership, Role
from organizations.services import (
    invitation_create,
    member_budget_set,
    member_remove,
    organization_api_key_create,
    organization_create,
    staff_actor,
)
from tests.browser.test_console_lists import HEIGHT, LONG_EMAILS, PASSWORD, WIDTH, assert_fits, measured, wait
from tests.browser.test_routing_admin import shots, whole_page  # noqa: F401

pytestmark = pytest.mark.browser

NAMES = [
    "Acme",
    "The International Consortium of Very Long Organization Names and Partners (EMEA)",
    "Beta Research Cooperative",
]


@pytest.fixture
def organizations(transactional_db):  # noqa: ANN001, ANN201
    """Three organizations; the first with four members (long emails, budgets, one
    removed), keys with long names, open invitations and a hold on its wallet."""
    staff = user_create(email="boss@example.com", password=PASSWORD, is_staff=True, is_superuser=True)
    people = [user_create(email=email) for email in LONG_EMAILS]
    made = []
    for n, name in enumerate(NAMES):
        organization = organization_create(creator=people[n], name=name)
        wallet_grant(user=organization.account, amount=Decimal("2500.5") * (n + 1), reason="pilot", actor=staff)
        made.append(organization)
    acme = made[0]
    owner = Membership.objects.get(organization=acme, user=people[0])
    members = [Membership.objects.create(organization=acme, user=person, role=Role.MEMBER) for person in people[1:]]
    member_budget_set(member=members[0], budget_credits=Decimal("250"), budget_window="month")
    for n, member in enumerate([owner, *members]):
        organization_api_key_create(member=member, name=f"Production backend for the {n}th integration (eu-west-1)")
    member_remove(actor=staff_actor(organization=acme), member=members[2])
    for email in ("new.hire.with.a.long.address@very-long-company-name-example.com", "contractor@example.org"):
        invitation_create(actor=owner, email=email, role=Role.ADMIN)
    wallet_hold_place(user=acme.account, amount=Decimal("12.5"), reference="turn-1")
    return {"staff": staff, "acme": acme}


def log_in(browser, live_server, staff) -> None:  # noqa: ANN001
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(staff.email)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "user-tools")))


def test_the_organization_pages_fit_1280_px(live_server, browser, plain_http_cookies, organizations, shots):  # noqa: F811
    log_in(browser, live_server, organizations["staff"])
    acme = organizations["acme"]

    listed = measured(browser, f"{live_server.url}/admin/organizations/organization/", shots / "org-list.png")
    assert_fits(listed, ["NAME", "SLUG", "MEMBERS", "BALANCE", "AVAILABLE", "CREATED"], 3)
    members = measured(browser, f"{live_server.url}/admin/organizations/membership/", shots / "org-members.png")
    assert_fits(members, ["PERSON", "ORGANIZATION", "ROLE", "BUDGET", "JOINED", "REMOVED"], 6)
    invitations = measured(
        browser, f"{live_server.url}/admin/organizations/invitation/", shots / "org-invitations.png"
    )
    assert_fits(invitations, ["EMAIL", "ORGANIZATION", "ROLE", "INVITED BY", "SENT", "EXPIRES", "STATE"], 2)

    # The keys and users lists with organizations' rows in them.
    keys = measured(browser, f"{live_server.url}/admin/accounts/apikey/", shots / "org-apikeys.png")
    assert_fits(keys, ["NAME", "PREFIX", "USER", "CREATED AT", "LAST USED", "BUDGET", "REVOKED AT"], 4)
    made_by = [el.get_attribute("title") for el in browser.find_elements(By.CSS_SELECTOR, "td.field-user_email .clip")]
    assert f"Acme: {LONG_EMAILS[1]}" in made_by
    users = measured(browser, f"{live_server.url}/admin/accounts/user/", shots / "org-users.png")
    assert_fits(users, ["EMAIL", "KIND", "ORGANIZATION", "IS STAFF", "IS ACTIVE", "DATE JOINED"], 8)

    # The organization's page: the name links to it from the list.
    browser.get(f"{live_server.url}/admin/organizations/organization/")
    browser.find_element(By.LINK_TEXT, "Acme").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "api-keys-group")))
    assert browser.save_screenshot(str(shots / "org-page.png"))
    layout = browser.execute_script(
        """return {
          scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
          rows: [...document.querySelectorAll('.inline-group tbody tr')]
            .filter(row => row.getBoundingClientRect().height > 0)
            .map(row => Math.round(row.getBoundingClientRect().height)),
          groups: [...document.querySelectorAll('.inline-group h2')].map(h => h.innerText.trim()),
        }"""
    )
    assert layout["scrollWidth"] <= layout["clientWidth"], layout
    assert layout["groups"] == ["MEMBERS", "OPEN INVITATIONS", "API KEYS"], layout
    assert len(layout["rows"]) == 4 + 2 + 4, layout  # members, invitations, keys
    assert max(layout["rows"]) <= 40, f"rows wrap: {layout}"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "2500.50000000" in body and "12.50000000" in body and "2488.00000000" in body
    assert "250 / month" in body
    whole_page(browser, shots / "org-page-whole.png", WIDTH)

    # The grant button leads to the grant form for the organization's wallet.
    browser.set_window_size(WIDTH, HEIGHT)
    browser.find_element(By.ID, "grant-credits-link").click()
    form = wait(browser).until(EC.presence_of_element_located((By.ID, "grant_form")))
    assert "Grant credits to Organization Acme" in browser.find_element(By.TAG_NAME, "body").text
    form.find_element(By.NAME, "amount").send_keys("100")
    form.find_element(By.NAME, "reason").send_keys("Conference pilot")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert Wallet.objects.get(user=acme.account).balance == Decimal("2600.5")
    assert browser.save_screenshot(str(shots / "org-wallet.png"))
    whole_page(browser, shots / "org-wallet-whole.png", WIDTH)


SCROLLS = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"


def test_a_members_page_an_org_keys_page_and_the_add_form(live_server, browser, plain_http_cookies, organizations, shots):  # noqa: F811, E501
    log_in(browser, live_server, organizations["staff"])
    acme = organizations["acme"]
    member = Membership.objects.get(organization=acme, user__email=LONG_EMAILS[1])
    browser.get(f"{live_server.url}/admin/organizations/membership/{member.pk}/change/")
    budget = wait(browser).until(EC.presence_of_element_located((By.NAME, "budget_credits")))
    whole_page(browser, shots / "org-membership.png", WIDTH)
    scroll_width, client_width = browser.execute_script(SCROLLS)
    assert scroll_width <= client_width
    budget.clear()
    budget.send_keys("75")
    browser.find_element(By.NAME, "_save").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    member.refresh_from_db()
    assert member.budget_credits == Decimal("75")

    key = member.api_keys.get()
    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(f"{live_server.url}/admin/accounts/apikey/{key.pk}/change/")
    wait(browser).until(EC.presence_of_element_located((By.PARTIAL_LINK_TEXT, "Acme")))
    whole_page(browser, shots / "org-apikey.png", WIDTH)

    browser.set_window_size(WIDTH, HEIGHT)
    browser.get(f"{live_server.url}/admin/organizations/organization/add/")
    wait(browser).until(EC.presence_of_element_located((By.NAME, "name"))).send_keys("Gamma Labs")
    browser.find_element(By.NAME, "owner_email").send_keys("j@x.io")
    browser.find_element(By.NAME, "_save").click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert browser.save_screenshot(str(shots / "org-added.png"))
    assert Membership.objects.get(organization__slug="gamma-labs").user.email == "j@x.io"


def test_the_usage_page_says_which_organization_and_member_it_shows(
    live_server, browser, plain_http_cookies, organizations, shots  # noqa: F811
):
    log_in(browser, live_server, organizations["staff"])
    acme = organizations["acme"]
    owner = Membership.objects.get(organization=acme, role=Role.OWNER)
    browser.get(f"{live_server.url}/admin/reporting/usage/?organization=acme&member={owner.pk}")
    scope = wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".usage-scope"))).text
    assert "Organization: Acme (all)." in scope and f"Member: {owner.user.email} in Acme (all)." in scope
    assert browser.execute_script("return document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    whole_page(browser, shots / "usage-organization.png", WIDTH)
