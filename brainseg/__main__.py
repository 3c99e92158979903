"""`python -m brainseg ...`: the same commands as the `brainseg` script (used under torchrun)."""

from brainseg.cli import app

app()
