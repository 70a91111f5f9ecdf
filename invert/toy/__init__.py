"""The toy world: procedural scenes and exact edits (``world``), a small InstructPix2Pix trained on them
(``train``, written to ``model/``) and its sanity check (``evaluate``)."""
