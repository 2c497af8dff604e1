"""The rooms of minitorch_run.py, one concern each: errors (one line, never a traceback),
flags, csvs (reading and checking CSVs), scaling, checkpoints (and resume), torchrun, speed
(the batched loader), outputs (what a run writes) and pictures. minitorch_run.py puts them
together around the lesson's network, loss, optimizer and loop steps (minitorch_loop.py)."""
