"""`scalpd tui`: the Textual application that watches and steers a running daemon.

Five screens (keys 1-5, tab / shift+tab): overview, risk, health, runs, model; `?` lists the
keys. A worker refreshes every `interval_s` from the source (scalpd/ui/data.py: the control
socket's status, the store read-only); the daemon sees one small request a refresh and nothing
else. Commands (pause, resume, flatten after a confirmation, reload model) run in their own
worker, so a slow answer never freezes the screen, and their answer is shown as a notification.

When the daemon is not there (not started, stopped, restarted, or the path is some other
socket) the top line says DISCONNECTED with the reason, the store's panels keep showing, and the
next refresh that gets a status attaches again.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import ContentSwitcher, Footer, Static
from textual.worker import Worker

from scalpd.ops.control import ControlError
from scalpd.ui.data import Snapshot, Source
from scalpd.ui.widgets import (
    Banner,
    BreakersPanel,
    DecisionsPanel,
    EquityChart,
    HealthPanel,
    LimitsPanel,
    LogTailPanel,
    ModelPanel,
    OrdersPanel,
    Panel,
    PnlPanel,
    PositionsPanel,
    RunsPanel,
    StateLine,
    TradesPanel,
)

SCREENS = [
    ("overview", "Overview"),
    ("risk", "Risk"),
    ("health", "Health"),
    ("runs", "Runs"),
    ("model", "Model"),
]

KEYS = [
    ("p", "pause entries (exits still run)"),
    ("r", "resume: reset the pause and every tripped breaker"),
    ("f", "flatten: close every position (asks first)"),
    ("m", "reload the model from strategy.model_path"),
    ("1-5", "overview, risk, health, runs, model"),
    ("tab / shift+tab", "next / previous screen"),
    ("?", "this help"),
    ("q", "quit (the daemon runs on)"),
]


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismissed with True only on `y`."""

    BINDINGS: ClassVar = [
        Binding("y", "answer(True)", "yes"),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question)
            yield Static("y = yes    n / esc = no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar = [
        Binding("escape", "close", "close"),
        Binding("question_mark", "close", "close", show=False),
        Binding("q", "close", "close", show=False),
    ]

    def compose(self) -> ComposeResult:
        lines = "\n".join(f"  {key:<16} {what}" for key, what in KEYS)
        with Vertical(id="dialog"):
            yield Static(f"Keys\n\n{lines}\n\nesc closes this help", id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)


class ScalpdApp(App[None]):
    """The terminal UI over one `Source` (see the module docstring)."""

    TITLE = "scalpd"
    ENABLE_COMMAND_PALETTE = False
    # Wide terminals get the overview in two columns; 80 columns stack it.
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (120, "-wide")]
    CSS = """
    StateLine { height: 1; background: $panel; }
    Banner { height: auto; padding: 0 1; }
    ContentSwitcher { height: 1fr; }
    .screen-body { padding: 0 1; }
    Panel { height: auto; margin-bottom: 1; }
    #top { height: auto; }
    PnlPanel { width: 40; margin-right: 2; }
    EquityChart { height: 7; width: 1fr; border: round $primary; }
    #tables { height: auto; layout: vertical; }
    .-wide #tables {
        layout: grid; grid-size: 2; grid-columns: 1fr 1fr; grid-rows: auto; grid-gutter: 1 2;
    }
    .-wide #tables Panel { margin-bottom: 0; }
    .-wide TradesPanel { column-span: 2; }
    ConfirmScreen, HelpScreen { align: center middle; }
    #dialog {
        width: 76; max-width: 100%; height: auto; padding: 1 2;
        border: thick $warning; background: $surface;
    }
    HelpScreen #dialog { border: round $primary; }
    .hint { color: $text-muted; margin-top: 1; }
    """
    BINDINGS: ClassVar = [
        Binding("p", "pause", "pause"),
        Binding("r", "resume", "resume"),
        Binding("f", "flatten", "flatten"),
        Binding("m", "reload_model", "reload model"),
        *[Binding(str(i + 1), f"show({i})", n, show=False) for i, (_, n) in enumerate(SCREENS)],
        Binding("tab", "cycle(1)", "next screen", show=False, priority=True),
        Binding("shift+tab", "cycle(-1)", "previous screen", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, source: Source, interval_s: float = 1.0) -> None:
        super().__init__()
        self.source = source
        self.interval_s = interval_s
        self.snapshot = Snapshot(error="connecting")
        self.active = 0
        self.last_result: str | None = None
        self.command_worker: Worker | None = None
        self.refreshes = 0

    def compose(self) -> ComposeResult:
        yield StateLine(id="state")
        yield Banner(id="banner")
        with ContentSwitcher(initial="overview"):
            with VerticalScroll(id="overview", classes="screen-body"):
                with Horizontal(id="top"):
                    yield PnlPanel()
                    yield EquityChart([])
                with Vertical(id="tables"):
                    yield PositionsPanel()
                    yield OrdersPanel()
                    yield TradesPanel()
            with VerticalScroll(id="risk", classes="screen-body"):
                yield LimitsPanel()
                yield BreakersPanel()
            with VerticalScroll(id="health", classes="screen-body"):
                yield HealthPanel()
                yield LogTailPanel()
                yield DecisionsPanel()
            with VerticalScroll(id="runs", classes="screen-body"):
                yield RunsPanel()
            with VerticalScroll(id="model", classes="screen-body"):
                yield ModelPanel()
        yield Footer()

    def on_mount(self) -> None:
        self._draw()
        self.run_worker(self._poll(), name="poll", group="poll", exclusive=True)

    # -- data ----------------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh_data()
            except Exception as exc:  # the refresh must outlive any one bad answer
                self.log.error(f"refresh failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval_s)

    async def refresh_data(self) -> Snapshot:
        """Fetch one snapshot and redraw from it; what went wrong is shown, never raised."""
        try:
            snap = await self.source.fetch()
        except Exception as exc:  # a source must not take the UI down with it
            snap = Snapshot(error=f"{type(exc).__name__}: {exc}")
        self.snapshot = snap
        self.refreshes += 1
        self._draw()
        return snap

    def _draw(self) -> None:
        snap = self.snapshot
        self.query_one(StateLine).show(snap, [name for _, name in SCREENS], self.active)
        for panel in self.query(Panel):
            panel.show(snap)
        self.query_one(EquityChart).show(snap)

    # -- screens -------------------------------------------------------------------------------

    def action_show(self, index: int) -> None:
        self.active = index % len(SCREENS)
        name = SCREENS[self.active][0]
        self.query_one(ContentSwitcher).current = name
        if hasattr(self.source, "want_models"):
            self.source.want_models = name == "model"
        self.query_one(StateLine).show(self.snapshot, [n for _, n in SCREENS], self.active)

    def action_cycle(self, step: int) -> None:
        self.action_show(self.active + step)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    # -- commands ------------------------------------------------------------------------------

    def action_pause(self) -> None:
        self._command("pause", reason="tui")

    def action_resume(self) -> None:
        self._command("resume")

    def action_reload_model(self) -> None:
        self._command("reload-model")

    def action_flatten(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._command("flatten", reason="flatten")
            else:
                self.notify("flatten cancelled")

        self.push_screen(
            ConfirmScreen("Flatten: close EVERY open position at market now?"), answered
        )

    def _command(self, cmd: str, **args: Any) -> None:
        self.command_worker = self.run_worker(
            self._send(cmd, **args), name=cmd, group="command", exclusive=False
        )

    async def _send(self, cmd: str, **args: Any) -> None:
        try:
            result = await self.source.command(cmd, **args)
        except ControlError as exc:
            self.last_result = f"{cmd} failed: {exc}"
            self.notify(self.last_result, severity="error", timeout=8)
        else:
            self.last_result = f"{cmd}: {_answer(result)}"
            self.notify(self.last_result)
        await self.refresh_data()


def _answer(result: Any) -> str:
    if isinstance(result, dict):
        return ", ".join(f"{k} {v}" for k, v in result.items()) or "done"
    return "done" if result is None else str(result)
