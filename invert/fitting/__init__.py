"""Fitting an instruction: the loop (``loop``), its timestep and noise schedules, losses, validation and keep rule,
resumable state (``checkpoint``), the init text (``phrases``, ``pez``) and the file a fit writes (``assembly``)."""
