"""Who a request speaks for and what it is for, as the client says (issue: front ends
and end users). Both are read by the views of both APIs and stored on the turn, with
the organization member who made the request's key (organizations), when it is one:

- the end user: the body's field (the OpenAI `user`; the chat API's `end_user`),
  else the END_USER_HEADER header (Open WebUI sends `X-OpenWebUI-User-Id` with
  ENABLE_FORWARD_USER_INFO_HEADERS). Only a request through an API key names one: a
  key's end users are its own (accounts.models.EndUser), each with the key's
  end-user budget (billing.limits).
- the purpose: the body's `metadata.purpose` (/v1), else the `X-Parley-Purpose`
  header: a short label (`title`, `tags`, `follow_ups`...) that usage reports break
  totals down by, so a front end's background requests can be told apart.
"""

import re
from dataclasses import dataclass

from django.conf import settings
from rest_framework.request import Request

from accounts.models import ApiKey, EndUser
from accounts.services import end_user_named
from core.exceptions import field_error

PURPOSE_HEADER = "X-Parley-Purpose"
PURPOSE = re.compile(r"^[A-Za-z0-9_.:-]{1,32}$")


@dataclass(frozen=True)
class Attribution:
    end_user: EndUser | None = None
    purpose: str = ""
    # An organization's key: the member who made it (organizations.Membership id).
    membership_id: int | None = None


NO_ATTRIBUTION = Attribution()  # a request that names neither (the console, a script)


def request_membership_id(request: Request) -> int | None:
    """The organization member behind the request's key (None for a person's key):
    whose sessions, turns and files in the organization's account the request sees."""
    return getattr(request.auth, "membership_id", None) if isinstance(request.auth, ApiKey) else None


def purpose_clean(value: str, *, field: str) -> str:
    if value and not PURPOSE.match(value):
        raise field_error(field, "A purpose is 1-32 letters, digits, '_', '.', ':' or '-' (e.g. title).")
    return value


def request_attribution(
    request: Request, *, end_user: str = "", purpose: str = "", end_user_field: str, purpose_field: str
) -> Attribution:
    """The request's end user (`end_user` from the body, its field `end_user_field`,
    else the header) and purpose (`purpose` from the body, else the header)."""
    header = settings.END_USER_HEADER
    external_id, field = (end_user, end_user_field) if end_user else (request.headers.get(header, "").strip(), header)
    if purpose:
        purpose = purpose_clean(purpose, field=purpose_field)
    else:
        purpose = purpose_clean(request.headers.get(PURPOSE_HEADER, "").strip(), field=PURPOSE_HEADER)
    api_key = request.auth if isinstance(request.auth, ApiKey) else None
    return Attribution(
        end_user=end_user_named(api_key=api_key, external_id=external_id, field=field),
        purpose=purpose,
        membership_id=api_key.membership_id if api_key is not None else None,
    )
