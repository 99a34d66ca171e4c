"""What ``ask`` and ``chat`` share for conversations and the log: the typed value their options
(``-c/--continue``, ``--conversation ID``, ``--log/--no-log``: ``shared_options.CONVERSATION``)
build, and opening the log and the conversation they name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConversationChoice:
    log: bool = True  # write to logs.db (conversations live there)
    latest: bool = False  # -c/--continue
    conversation_id: str | None = None  # --conversation ID

    @property
    def continuing(self) -> bool:
        return self.latest or self.conversation_id is not None

    def begin(self):
        """The log (None when off) and the conversation the options name (a new one without -c)."""
        from stepaudio_cli import conversation
        from stepaudio_cli.logbook import Logbook

        log = Logbook() if self.log else None
        return log, conversation.start(log, latest=self.latest, conversation_id=self.conversation_id)
