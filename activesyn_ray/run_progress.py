"""What the driver's console shows of a run (console.RunConsole polls Coordinator.progress):
the lines said so far, the step under way, the last accuracy. The lines also go to run.log."""

from __future__ import annotations

import logging

log = logging.getLogger("activesyn")


class RunProgress:
    def __init__(self):
        self.lines: list[str] = []
        self.doing = ""
        self.accuracy: float | None = None
        self.started = False

    def say(self, text: str) -> None:
        log.info(text)
        self.lines.append(text)

    def since(self, since: int, *, samples: int) -> dict:
        """The lines after the first `since`, with the samples so far."""
        return {"lines": self.lines[since:], "samples": samples, "accuracy": self.accuracy,
                "doing": self.doing, "started": self.started}
