"""The Library tab: a new before/after pair picks and mixes instructions from a library (no fitting), shown with
the weights it chose, then edits images like the Apply tab."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from invert.defaults import TEMPERATURE_LIMITS
from invert.settings.fields import describe_range

from .app import MODEL_EVENT, App, markdown_text
from .apply_tab import edit, follow_selection, image_inputs, results_view
from .backend import DEFAULT_TEMPERATURE, InvertError, check_value, methods, printable

ANY_METHOD = "its only one"
TOP = "Mix only the best K"
TEMPERATURE = "Temperature"


def build(app: App) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            gr.Markdown("### 1. Library and a new pair\nThe library mixes its instructions by how well their "
                        "exemplars' CLIP direction matches this pair's (`invert library build` makes one).")
            with gr.Row():
                library = gr.File(file_types=[".safetensors"], label="Library file", elem_id="library-file", scale=2)
                method = gr.Dropdown([ANY_METHOD, *(name for _, name in methods())], value=ANY_METHOD, scale=1,
                                     label="Method", info="for a library of several")
            with gr.Row():
                before = gr.File(file_types=["image"], label="Before", elem_id="library-before")
                after = gr.File(file_types=["image"], label="After", elem_id="library-after")
            with gr.Row():
                # A number, not a slider: any value `apply --library --temperature` takes; the library's check
                # refuses one out of its range, naming the control.
                temperature = gr.Number(DEFAULT_TEMPERATURE, label=TEMPERATURE, scale=2,
                                        info=f"lower: fewer instructions mixed {describe_range(TEMPERATURE_LIMITS)}")
                top = gr.Number(0, label=TOP, info="0: all", scale=1)
            gr.Markdown("### 2. Images")
            inputs = image_inputs("library")
            run = gr.Button("Edit with the library", variant="primary", elem_id="library-button")
        with gr.Column(scale=7):
            # No initial data: an empty frame would fix the axes' types as numbers, and the names never show.
            weights = gr.BarPlot(None, x="instruction", y="weight", height=200, sort="-y", y_lim=[0, 1],
                                 label="Weights the library chose")
            chosen_text = gr.Markdown(elem_id="library-weights")
            results = results_view(app, "library")

    def apply(request: gr.Request, library, before, after, temperature, top, method, *values):
        if not library:
            raise InvertError("upload a library file (invert library build writes one)")
        if not before or not after:
            raise InvertError("upload a before image and its after image")
        temperature = check_value(temperature, float, TEMPERATURE_LIMITS, TEMPERATURE)
        best = check_value(top or 0, int, {"minimum": 0}, TOP) or None  # empty or 0: all
        session = app.session(request)
        folder_in = session.new_folder("pair")
        befores = session.copy_uploads([before], folder_in / "before")
        afters = session.copy_uploads([after], folder_in / "after")
        inst, chosen = app.model.library_instruction(session.copy_uploads([library], session.new_folder("lib"))[0],
                                                     befores, afters, temperature, best,
                                                     None if method == ANY_METHOD else method)
        edited = edit(app, session, "library", inst, values)
        listed = " · ".join(f"**{markdown_text(name)}** {w:.3f}" for name, w in chosen)  # names from the file
        return (_weights(chosen), f"Mixed: {listed}", *edited)

    run.click(app.handler(apply), [library, before, after, temperature, top, method, *inputs.components()],
              [weights, chosen_text, *results.components()], api_name="library", **MODEL_EVENT)
    follow_selection(app, "library", results)


def _weights(chosen: list[tuple[str, float]]) -> pd.DataFrame:
    return pd.DataFrame({"instruction": [printable(n) for n, _ in chosen], "weight": [round(w, 4) for _, w in chosen]})
