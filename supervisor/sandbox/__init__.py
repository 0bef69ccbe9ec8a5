"""Sandboxes: where an agent's commands run. Backends are plugins (``register_sandboxes``)."""
