"""`seg-eval`: score an exported artifacts folder on labelled data, run exactly as seg-run runs it.

`evaluate` is the library call; `report` writes what a person reads (report.md, the plot, overlays)
and report.json; `cli` is the command. Never imports torch.
"""
