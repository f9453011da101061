"""Many clips in one run: ``python -m latentsync_core batch MANIFEST OUT_DIR`` (see :mod:`.command`).

:mod:`.manifest` reads and checks the rows, :mod:`.plan` decides what runs (resume by settings hash),
:mod:`.worker` holds the loaded models and runs one row as the command line does, and the engines hand rows
to workers: :mod:`.local_engine` (threads in this process) and :mod:`.ray_engine` (Ray actors, optional).
"""
