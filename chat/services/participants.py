"""Participants (the agents of a round table or an orchestrated panel) and the
session mode rules that depend on them.

Invariants, kept under a row lock on the session so a concurrent delete and mode
change cannot both pass their check:
- a `roundtable` session has at least 2 participants;
- an `orchestrator` session has at least 1 participant and an active orchestrator alias;
- a session has at most MAX_PARTICIPANTS participants (each one is a paid call per turn).
Every participant's model alias was an active price when it was set.
"""

from django.db import transaction
from django.db.models import Max

from billing.selectors import model_price_for_alias
from chat.models import ChatSession, Participant
from core.exceptions import StateConflict, field_error

MAX_PARTICIPANTS = 10
MIN_PARTICIPANTS = {ChatSession.Mode.ROUNDTABLE: 2, ChatSession.Mode.ORCHESTRATOR: 1}


def alias_require_active(field: str, alias: str) -> str:
    """`alias`, when it has an active price of a chat model; else 400 naming `field`."""
    price = model_price_for_alias(alias=alias) if alias else None
    if price is None:
        raise field_error(field, f"'{alias}' is not an active model alias.")
    if price.kind != price.Kind.CHAT:
        raise field_error(field, f"'{alias}' is an {price.kind} model; a participant needs a chat model.")
    return alias


def _require_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise field_error("name", "This field may not be blank.")
    return name


def _locked_session(session: ChatSession) -> ChatSession:
    return ChatSession.objects.select_for_update().get(pk=session.pk)


def participant_create(
    *, session: ChatSession, name: str, model_alias: str, system_prompt: str = "", position: int | None = None
) -> Participant:
    """Add an agent; without a position it speaks after the current last one."""
    name = _require_name(name)
    alias_require_active("model_alias", model_alias)
    with transaction.atomic():
        locked = _locked_session(session)
        existing = Participant.objects.filter(session=locked)
        if existing.count() >= MAX_PARTICIPANTS:
            raise StateConflict(f"A session can have at most {MAX_PARTICIPANTS} participants.")
        if position is None:
            last = existing.aggregate(last=Max("position"))["last"]
            position = 0 if last is None else last + 1
        return Participant.objects.create(
            session=locked, name=name, model_alias=model_alias, system_prompt=system_prompt, position=position
        )


def participant_update(
    *,
    participant: Participant,
    name: str | None = None,
    model_alias: str | None = None,
    system_prompt: str | None = None,
    position: int | None = None,
) -> Participant:
    """Change the given fields (None leaves a field as it is)."""
    changed: list[str] = []
    if name is not None:
        participant.name = _require_name(name)
        changed.append("name")
    if model_alias is not None:
        participant.model_alias = alias_require_active("model_alias", model_alias)
        changed.append("model_alias")
    if system_prompt is not None:
        participant.system_prompt = system_prompt
        changed.append("system_prompt")
    if position is not None:
        participant.position = position
        changed.append("position")
    if changed:
        participant.save(update_fields=changed)
    return participant


def participant_delete(*, participant: Participant) -> None:
    """Remove an agent, unless the session's mode needs it (422)."""
    with transaction.atomic():
        locked = _locked_session(participant.session)
        remaining = Participant.objects.filter(session=locked).exclude(pk=participant.pk).count()
        needed = MIN_PARTICIPANTS.get(locked.mode, 0)
        if remaining < needed:
            raise StateConflict(
                f"A {locked.mode} session needs at least {needed} participant{'s' if needed > 1 else ''}; "
                "change the session's mode before removing this one."
            )
        participant.delete()


def session_mode_change(*, session: ChatSession, mode: str, orchestrator_alias: str | None = None) -> ChatSession:
    """Switch the session to `mode` when its participants allow it.

    `orchestrator_alias`: None keeps the stored one, "" clears it, any other value must
    be an active price alias (else 400 naming `orchestrator_alias`). An impossible change
    raises StateConflict (422) and changes nothing, in the database or on `session`.
    """
    if mode not in ChatSession.Mode.values:
        raise field_error("mode", f"'{mode}' is not one of {', '.join(ChatSession.Mode.values)}.")
    if orchestrator_alias:
        alias_require_active("orchestrator_alias", orchestrator_alias)
    with transaction.atomic():
        locked = _locked_session(session)
        count = Participant.objects.filter(session=locked).count()
        alias = locked.orchestrator_alias if orchestrator_alias is None else orchestrator_alias
        if mode == ChatSession.Mode.ROUNDTABLE and count < 2:
            raise StateConflict(f"A round table needs at least 2 participants; this session has {count}.")
        if mode == ChatSession.Mode.ORCHESTRATOR:
            if count < 1:
                raise StateConflict("Orchestrator mode needs at least 1 participant; this session has none.")
            if not alias:
                raise StateConflict("Orchestrator mode needs an orchestrator_alias.")
            if model_price_for_alias(alias=alias) is None:
                raise StateConflict(f"The orchestrator alias '{alias}' is no longer an active model alias.")
        locked.mode = mode
        locked.orchestrator_alias = alias
        locked.save(update_fields=["mode", "orchestrator_alias", "updated_at"])
    session.mode, session.orchestrator_alias, session.updated_at = (
        locked.mode,
        locked.orchestrator_alias,
        locked.updated_at,
    )
    return session
