"""Dialogs and full screens."""
