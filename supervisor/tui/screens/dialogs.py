"""Dialogs that start work: a new agent (a task run) and a recipe run.

Each dialog does its own submitting, so a refusal from the server (an unknown model, a
bad workspace) shows inline and the person can fix the field instead of starting over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static, TextArea

from supervisor.errors import SupervisorError

Submit = Callable[[str, dict[str, Any]], Awaitable[Any]]


def _form(id: str | None = None) -> VerticalScroll:
    """The scrolling body of a form: Tab goes from field to field, not to the body (a
    focused field is scrolled into view)."""
    form = VerticalScroll(classes="form", id=id)
    form.can_focus = False
    return form


class Dialog(ModalScreen[str | None]):
    """A form: ctrl+s submits, escape cancels; the result is the new run's id."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "submit", "Start", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, submit: Submit) -> None:
        super().__init__()
        self.submit = submit

    def show_error(self, message: str) -> None:
        error = self.query_one(".error", Static)
        error.update(Text(message, style="bold red"))
        error.display = True

    def action_cancel(self) -> None:
        """Close without starting anything."""
        self.dismiss(None)

    def action_submit(self) -> None:
        """Check the form and start the run."""
        try:
            cmd, args = self.request()
        except (SupervisorError, ValueError) as exc:
            self.show_error(str(exc))
            return
        self.send(cmd, args)

    def request(self) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    @work(exclusive=True, exit_on_error=False)
    async def send(self, cmd: str, args: dict[str, Any]) -> None:
        self.query_one(".error", Static).display = False
        try:
            result = await self.submit(cmd, args)
        except SupervisorError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(str((result or {}).get("run_id") or ""))

    @on(Button.Pressed, "#start")
    def start_pressed(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#cancel")
    def cancel_pressed(self) -> None:
        self.action_cancel()


class NewAgentScreen(Dialog):
    """A task for one or more new agents."""

    def __init__(
        self,
        submit: Submit,
        *,
        model: str = "",
        sandbox: str = "docker",
        hosts: tuple[str, ...] = (),
    ) -> None:
        super().__init__(submit)
        self.default_model = model
        self.default_sandbox = sandbox if sandbox in ("docker", "local") else "docker"
        self.hosts = hosts  # registered remote hosts, offered as "host: NAME" sandboxes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="new-agent"):
            yield Static("New agent", classes="dialog-title")
            with _form():
                yield Label("Task — what the agent should do, in plain English")
                yield TextArea(id="task", soft_wrap=True)
                yield Label("Model (empty: the default)")
                yield Input(placeholder=self.default_model or "default model", id="model")
                yield Label("Workspace folder (copied into the sandbox; empty: none)")
                yield Input(placeholder="e.g. ~/src/project", id="workspace")
                with Horizontal(classes="row"):
                    with Vertical():
                        yield Label("Sandbox")
                        yield Select(
                            [("docker", "docker"), ("local", "local")]
                            + [(f"host: {h}", f"host:{h}") for h in self.hosts],
                            value=self.default_sandbox,
                            allow_blank=False,
                            id="sandbox",
                        )
                    with Vertical():
                        yield Label("Agents")
                        yield Input("1", type="integer", id="count")
                    with Vertical():
                        yield Label("Network")
                        yield Checkbox("allow network", id="network")
            yield Static(classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Start (ctrl+s)", id="start", variant="primary")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        """Focus the task; hide the error line until there is one."""
        self.query_one(".error", Static).display = False
        self.query_one("#task", TextArea).focus()

    def request(self) -> tuple[str, dict[str, Any]]:
        from supervisor.server import MAX_MESSAGE_CHARS

        task = self.query_one("#task", TextArea).text.strip()
        if not task:
            raise ValueError("Give the agent a task.")
        if len(task) > MAX_MESSAGE_CHARS:
            raise ValueError(
                f"The task is too long ({len(task):,} characters; at most "
                f"{MAX_MESSAGE_CHARS:,}). Put long material in a file in the workspace."
            )
        count_text = self.query_one("#count", Input).value.strip() or "1"
        count = int(count_text) if count_text.isdigit() else 0
        if not 1 <= count <= 1000:
            raise ValueError("Agents must be a number from 1 to 1000.")
        workspace = self.query_one("#workspace", Input).value.strip()
        if workspace:
            # The server may run in another folder: the path must not depend on its cwd.
            path = Path(workspace).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"No folder {path} (the workspace must be a folder).")
            workspace = str(path)
        sandbox = str(self.query_one("#sandbox", Select).value)
        host = sandbox.removeprefix("host:") if sandbox.startswith("host:") else ""
        return "run.start", {
            "task": task,
            "model": self.query_one("#model", Input).value.strip(),
            "workspace": workspace,
            "sandbox": "" if host else sandbox,
            "host": host,
            "agents": count,
            "network": self.query_one("#network", Checkbox).value,
        }


class RecipeScreen(Dialog):
    """Pick a recipe, fill its parameters (defaults and help shown), start it."""

    def __init__(self, submit: Submit, recipes: dict[str, Path] | None = None) -> None:
        super().__init__(submit)
        self.recipes = recipes
        self.recipe: Any = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="run-recipe"):
            yield Static("Run recipe", classes="dialog-title")
            yield Select[str]([], prompt="choose a recipe", id="recipe")
            yield Static(classes="description")
            yield _form(id="params")
            yield Static(classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Start (ctrl+s)", id="start", variant="primary")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        """List the recipes (finding them loads the plugins, so not in the app's start)."""
        self.query_one(".error", Static).display = False
        if self.recipes is None:
            from supervisor import recipes

            try:
                self.recipes = recipes.discover()
            except SupervisorError as exc:
                self.recipes = {}
                self.show_error(str(exc))
        select = self.query_one("#recipe", Select)
        select.set_options([(name, name) for name in sorted(self.recipes)])
        select.focus()
        if len(self.recipes) == 1:
            select.value = next(iter(self.recipes))

    @on(Select.Changed, "#recipe")
    async def recipe_chosen(self, event: Select.Changed) -> None:
        """Build the parameter form of the chosen recipe."""
        from supervisor import recipes

        form = self.query_one("#params", VerticalScroll)
        await form.remove_children()
        self.recipe = None
        self.query_one(".error", Static).display = False
        if not isinstance(event.value, str) or not self.recipes:
            return
        try:
            recipe = recipes.parse(self.recipes[event.value])
        except SupervisorError as exc:
            self.show_error(str(exc))
            return
        self.recipe = recipe
        self.query_one(".description", Static).update(
            Text(recipe.description or "", style="italic")
        )
        widgets: list[Widget] = []
        for name, param in recipe.parameters.items():
            help_text = f"{name} ({param.type})" + (f" — {param.help}" if param.help else "")
            widgets.append(Label(help_text))
            default = "" if param.default is None else str(param.default)
            if param.type == "bool":
                default = "true" if param.default else "false"
            if param.type == "bool":
                widgets.append(
                    Checkbox(name, bool(param.default), id=f"param-{name}", classes="param")
                )
            elif param.choices:
                widgets.append(
                    Select(
                        [(str(c), str(c)) for c in param.choices],
                        value=default if default in map(str, param.choices) else Select.BLANK,
                        id=f"param-{name}",
                        classes="param",
                    )
                )
            else:
                widgets.append(Input(default, id=f"param-{name}", classes="param"))
        if not widgets:
            widgets.append(Static(Text("This recipe takes no parameters.", style="dim")))
        await form.mount_all(widgets)

    def request(self) -> tuple[str, dict[str, Any]]:
        if self.recipe is None:
            raise ValueError("Choose a recipe.")
        given: dict[str, str] = {}
        for widget in self.query(".param"):
            name = (widget.id or "")[len("param-") :]
            if isinstance(widget, Input):
                given[name] = widget.value.strip()
            elif isinstance(widget, Select) and isinstance(widget.value, str):
                given[name] = widget.value
            elif isinstance(widget, Checkbox):
                given[name] = "true" if widget.value else "false"
        # Checked here for clear errors, and paths made absolute, before the server sees them.
        values = self.recipe.params(given)
        return "recipe.start", {"path": str(self.recipe.path), "params": self.recipe.texts(values)}


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question before something that cannot be undone: y says yes; n, Escape or
    Enter (No has focus) say no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="confirm"):
            yield Static(self.question, classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button("Yes, stop (y)", id="yes", variant="error")
                yield Button("No (n / esc)", id="no")
        yield Footer()

    def on_mount(self) -> None:
        """No is the default: Enter on the focused button keeps the work going."""
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        """Close with the answer."""
        self.dismiss(yes)

    @on(Button.Pressed, "#yes, #no")
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
