"""Operator actions shared by the admin and the management commands: the overview, cancel,
run now, priority, dead letters, and secret masking for display."""
