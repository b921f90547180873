"""How `join` tells whether its SuperNode is really connected, when to restart it, and what to tell the user.

Flower 1.42's SuperNode can be alive yet gone: after an HTTP error its fleet loop ends and it
deactivates, or its heartbeat thread dies and the SuperLink marks it offline 60 s later, while the process idles
on. "Is the process alive" says nothing, so `join` combines two signals:

- the site's heartbeat answer, `superlink: online | offline | unknown` (the site asks the SuperLink's ListNodes);
- the SuperNode's own log: an HTTP error on a fleet call (its loop ended), "Failed to activate SuperNode" (HTTP 412
  on a re-activation within ≈ 60 s of a crash, or a key the SuperLink does not know yet), and `app refused:` lines
  from federation.node_runtime.

Pure logic (no processes, no clock of its own) so the decisions and the status line are unit-tested.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# A fleet call that failed for good: Flower logs the httpx error and the loop (or heartbeat thread) is over.
# 502/503/504 and transport errors are retried by Flower itself and are not signs.
_FLEET_ERROR = re.compile(r"(?:Client|Server) error '(\d{3})[^']*' for url '[^']*/v1/fleet/([\w-]+)")
_ACTIVATE_REFUSED = re.compile(r"Failed to activate SuperNode")
_REFUSED = re.compile(r"app refused: (.*?)(?: \(run \d+\))?$")
REFUSAL_LINE = "refused an app the platform did not ship: "


@dataclass
class LogSigns:
    lost: list[str] = field(default_factory=list)  # why the connection is over, e.g. "HTTP 500 on pull-messages"
    activate_refused: bool = False
    refusals: list[str] = field(default_factory=list)


def read_signs(text: str) -> LogSigns:
    signs = LogSigns()
    for line in text.splitlines():
        if m := _FLEET_ERROR.search(line):
            if m.group(1) not in ("502", "503", "504"):
                signs.lost.append(f"HTTP {m.group(1)} on {m.group(2)}")
        elif _ACTIVATE_REFUSED.search(line):
            signs.activate_refused = True
        elif m := _REFUSED.search(line):
            signs.refusals.append(m.group(1))
    return signs


@dataclass
class LogTail:
    """New complete lines of a growing log file since the last read (a restarted log starts over)."""

    path: Path
    offset: int = 0
    _partial: bytes = b""

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = b""

    def read(self) -> str:
        if not self.path.exists():
            return ""
        size = self.path.stat().st_size
        if size < self.offset:  # truncated or replaced
            self.offset, self._partial = 0, b""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = self._partial + f.read(1 << 20)
            self.offset = f.tell()
        complete, _, self._partial = data.rpartition(b"\n")
        return complete.decode(errors="replace")


@dataclass
class Verdict:
    restart: bool  # stop the SuperNode (if alive) and start it again once `start_in` has passed
    start_in: float  # seconds to wait before the next start
    line: str  # the status line


@dataclass
class Watch:
    """Decides, once per status tick, whether the SuperNode is connected and whether to restart it.

    - SuperLink says offline for `offline_grace` s while the process lives (and was started long enough ago to have
      connected) → restart. Restarts that do not bring it online back off (×2 up to `offline_grace_max`), so a
      wrong answer from the site cannot make `join` restart a working node every few seconds forever.
    - A fleet HTTP error in the log → restart now (the loop is over; nothing else will revive it).
    - The process exited → start again after `retry_seconds`, or, if it was refused activation (HTTP 412),
      after a back-off from `backoff_start` doubling to `backoff_max`; never giving up (the site's 403 stops join).
    - The status line says "connected" only while the SuperLink sees the node online.
    """

    retry_seconds: float = 5.0
    offline_grace: float = 30.0
    offline_grace_max: float = 600.0
    backoff_start: float = 15.0
    backoff_max: float = 70.0
    started_at: float | None = None
    offline_since: float | None = None
    grace: float = 0.0
    backoff: float = 0.0
    last_link: str = "unknown"
    reason: str = ""  # why the last restart happened (shown while reconnecting)
    activation_refused: bool = False  # seen in this process's log (it may exit a tick later)

    def __post_init__(self) -> None:
        self.grace = self.offline_grace

    def started(self, now: float) -> None:
        self.started_at = now
        self.offline_since = None
        self.activation_refused = False

    def observe(self, now: float, alive: bool, code: int, body: dict, signs: LogSigns) -> Verdict:
        link = str(body.get("superlink", "unknown")) if code == 200 else "unknown"
        self.last_link = link
        if link == "online":
            self.grace, self.backoff, self.reason = self.offline_grace, 0.0, ""
        self.activation_refused = self.activation_refused or signs.activate_refused
        if not alive:  # call once per exit: each call with a refused activation doubles the back-off
            if self.activation_refused:
                self.backoff = min(self.backoff * 2, self.backoff_max) if self.backoff else self.backoff_start
                self.reason = "the SuperLink refused to activate the node yet (HTTP 412)"
                return Verdict(True, self.backoff, self._line(code, body, f"reconnecting · {self.reason}; "
                                                              f"retrying in {self.backoff:.0f}s"))  # fmt: skip
            self.reason = self.reason or "the SuperNode exited"
            return Verdict(True, self.retry_seconds, self._line(code, body, f"reconnecting · {self.reason}"))
        if signs.lost:
            self.reason = f"its connection ended ({signs.lost[-1]})"
            return Verdict(True, self.retry_seconds, self._line(code, body, f"reconnecting · {self.reason}"))
        if link == "offline":
            since = self.offline_since = self.offline_since if self.offline_since is not None else now
            since = max(since, self.started_at if self.started_at is not None else since)
            if now - since >= self.grace:
                self.reason = f"the SuperLink did not see it for {now - since:.0f}s"
                self.grace = min(self.grace * 2, self.offline_grace_max)  # only reset once it is seen online
                return Verdict(True, self.retry_seconds, self._line(code, body, f"reconnecting · {self.reason}"))
            return Verdict(False, 0.0, self._line(code, body, "reconnecting · the SuperLink does not see this node"))
        self.offline_since = None
        return Verdict(False, 0.0, self._line(code, body, None))

    def _line(self, code: int, body: dict, state: str | None) -> str:
        return status_line(code, body, self.last_link, state)


def status_line(code: int, body: dict, link: str, state: str | None = None) -> str:
    """`state` overrides the connection part (reconnecting...); otherwise it follows what the SuperLink sees."""
    if code == 0:
        site = f"site unreachable ({str(body.get('error', ''))[:60]})"
        return f"{state} · {site}" if state else f"{site} · cannot tell whether the SuperLink sees this node"
    if code != 200:
        site = f"site answered HTTP {code} ({str(body.get('error', ''))[:60]})"
        return f"{state} · {site}" if state else f"{site} · cannot tell whether the SuperLink sees this node"
    if state is None:
        state = {"online": "connected", "offline": "reconnecting"}.get(link, "waiting for the SuperLink")
    last = body.get("last_round")
    if not last:
        return f"{state} · waiting for the first round"
    loss = f"{last['train_loss']:.4f}" if last.get("train_loss") is not None else "n/a"
    return f"{state} · last round: {last['campaign']} round {last['round']} · train loss {loss}"


def training_now(home: Path, supernode_pid: int | None) -> str:
    """What the node is doing between heartbeats, for the status line: a round's task can run for many minutes,
    and "waiting for the first round" or the last round's loss alone would not say that it is training now.

    The warm worker writes what it runs (warm_worker.STATUS_FILE); otherwise a task is a process under the SuperNode:
    `federation.node_runtime`, or the task launcher's client (federation.task_launcher) waiting on its task."""
    try:
        from federation.warm_worker import STATUS_FILE  # plain-Python module level: no torch here

        status = json.loads((home / STATUS_FILE).read_text())
        if status.get("running"):
            return "training a round now"
        if status.get("waiting"):
            return f"{status['waiting']} round task(s) queued"
    except (OSError, ValueError, AttributeError):
        pass
    if supernode_pid is None:
        return ""
    import psutil  # only here: node_watch's other helpers are plain functions over logs and answers

    try:
        children = psutil.Process(supernode_pid).children(recursive=True)
    except psutil.Error:
        return ""
    for child in children:
        try:
            argv = child.cmdline()
            if "federation.node_runtime" in argv or ("federation.task_launcher" in argv and "serve" not in argv):
                return "running a round task now"
        except psutil.Error:
            continue
    return ""
