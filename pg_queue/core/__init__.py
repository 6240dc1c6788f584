"""The pure core: settings, errors, the payload contract, options, outcomes, the job context.

Nothing here touches the database or Django models; import-linter holds it to that.
"""
