"""The command palette's fleet commands (ctrl+p): every action of the app, by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, action): the same actions the keys run, so the two never disagree.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("New agent", "Start agents on a task (n)", "new_agent"),
    ("Run recipe", "Start a recipe run (R)", "run_recipe"),
    ("History", "Every run, and search over every transcript (h)", "history"),
    ("Hosts", "Remote hosts: load, GPUs busy and free; Enter: a host's agents (H)", "hosts"),
    ("Message agent", "Write to the selected agent (m)", "message"),
    ("Approve", "Approve the tool call the agent waits on (y)", "approve('approve')"),
    ("Deny", "Deny the tool call the agent waits on (d)", "approve('deny')"),
    ("Always allow", "Approve, and allow this pattern from now on (a)", "approve('always')"),
    ("Pause or resume agent", "Hold the selected agent before its next step (p)", "pause"),
    ("Stop agent", "Stop the selected agent, or the selected run (x)", "stop"),
    (
        "Restart agent",
        "Restart the agent from its transcript; resume an interrupted run (r)",
        "restart",
    ),
    ("Keep sandbox", "Keep the selected agent's sandbox when it ends (k)", "keep"),
    ("Open shell", "A shell in the selected agent's sandbox (o)", "shell"),
    ("Filter fleet", "Show only agents matching some text, or host:NAME (/)", "filter"),
    ("Sort fleet", "Cycle the fleet's sort order (s)", "sort"),
    ("Show transcript", "The Transcript tab (1)", "tab('transcript')"),
    ("Show changes", "The Changes tab: the workspace diff (2)", "tab('changes')"),
    ("Show shell", "The Shell tab (3)", "tab('shell')"),
    ("Show notes", "The Notes tab: memory notes (4)", "tab('notes')"),
    ("Show info", "The Info tab (5)", "tab('info')"),
    ("Detach", "Quit the TUI; agents keep running in the server (q)", "detach"),
)


class FleetCommands(Provider):
    """Supervisor's actions in the palette."""

    async def discover(self) -> Hits:
        for title, help_text, action in COMMANDS:
            yield DiscoveryHit(title, partial(self.app.run_action, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, action in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(title),
                    partial(self.app.run_action, action),
                    help=help_text,
                )
