"""Writes for chat, one module per thing: sessions, participants (and the session
mode rules that depend on them), turns (accept, run, complete), files (uploads).
Each module imports the others it needs directly; this package only re-exports the
public services for callers that want one import."""

from chat.services.files import file_check, file_create, file_delete
from chat.services.participants import (
    participant_create,
    participant_delete,
    participant_update,
    session_mode_change,
)
from chat.services.sessions import session_create, session_delete, session_update
from chat.services.turns import (
    turn_cancel,
    turn_complete,
    turn_create,
    turn_fail,
    turn_run,
    turn_start,
    turn_worst_case_cost,
    turns_sweep,
)

__all__ = [
    "file_check",
    "file_create",
    "file_delete",
    "participant_create",
    "participant_delete",
    "participant_update",
    "session_create",
    "session_delete",
    "session_mode_change",
    "session_update",
    "turn_complete",
    "turn_create",
    "turn_fail",
    "turn_run",
    "turn_start",
    "turn_worst_case_cost",
    "turn_cancel",
    "turns_sweep",
]
