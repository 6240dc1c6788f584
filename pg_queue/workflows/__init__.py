"""The workflow half: resource locks (``locks``), groups and chains (``groups``), and the
bookkeeping every finish path runs for them (``progress``)."""
