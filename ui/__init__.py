"""``invert ui``: a local web app (Gradio) over the invert library. backend.py holds every call into the
library; app.py the page and its shared helpers; one module per tab."""
