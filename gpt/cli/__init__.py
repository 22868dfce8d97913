"""What the entry points share: the command line checked before Hydra writes anything or any library loads (its
values' types and ranges, ``checks``, torch-free), every mistake as one line and exit status 2 (``errors``), and the
Hydra callback that holds the run directory (``run_directory``).

May import: every other part of the package (it is the top layer, below the entry points only).
"""
