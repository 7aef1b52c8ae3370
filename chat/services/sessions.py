"""Writes for chat sessions: create, change, soft delete."""

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from chat.models import ChatSession
from chat.selectors import price_default
from chat.services.participants import alias_require_active, session_mode_change


def session_create(
    *,
    user: User,
    title: str = "",
    mode: str = ChatSession.Mode.SINGLE,
    model_alias: str = "",
    system_prompt: str = "",
    orchestrator_alias: str = "",
    membership_id: int | None = None,
) -> ChatSession:
    """A new session. Without a model alias it gets the first configured one. A new
    session has no participants, so only `single` passes the mode rules (else 422
    and nothing is created): add participants, then change the mode.
    `membership_id`: made through an organization member's key (only theirs see it)."""
    for field, alias in (("model_alias", model_alias), ("orchestrator_alias", orchestrator_alias)):
        if alias:
            alias_require_active(field, alias)
    if not model_alias and (default := price_default()) is not None:
        model_alias = default.alias
    with transaction.atomic():
        session = ChatSession.objects.create(
            user=user, title=title, model_alias=model_alias, system_prompt=system_prompt,
            orchestrator_alias=orchestrator_alias, membership_id=membership_id,
        )  # fmt: skip
        if mode != ChatSession.Mode.SINGLE:
            session_mode_change(session=session, mode=mode)
    return session


def session_update(
    *,
    session: ChatSession,
    title: str | None = None,
    mode: str | None = None,
    model_alias: str | None = None,
    system_prompt: str | None = None,
    orchestrator_alias: str | None = None,
) -> ChatSession:
    """Changes the given fields (None leaves one as it is), all or nothing: an
    inactive alias is 400 naming the field; a mode the session's participants do not
    allow is 422 (the rules and their row lock are chat.services.participants'
    `session_mode_change`, shared with participant changes)."""
    if model_alias:
        alias_require_active("model_alias", model_alias)
    if orchestrator_alias:
        alias_require_active("orchestrator_alias", orchestrator_alias)
    with transaction.atomic():
        if mode is not None or orchestrator_alias is not None:
            target = mode if mode is not None else session.mode
            session_mode_change(session=session, mode=target, orchestrator_alias=orchestrator_alias)
        changes = {"title": title, "model_alias": model_alias, "system_prompt": system_prompt}
        changed = [name for name, value in changes.items() if value is not None]
        if changed:
            locked = ChatSession.objects.select_for_update().get(pk=session.pk)
            for name in changed:
                setattr(locked, name, changes[name])
            locked.save(update_fields=[*changed, "updated_at"])
            for name in [*changed, "updated_at"]:
                setattr(session, name, getattr(locked, name))
    return session


def session_delete(*, session: ChatSession) -> None:
    """Soft delete: the session disappears from the API; its turns, LLM calls and
    ledger rows stay, so usage and balances still add up."""
    ChatSession.objects.filter(pk=session.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())
