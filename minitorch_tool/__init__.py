"""The rooms of minitorch_run.py, one concern each (its docstring lists them)."""
