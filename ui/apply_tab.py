"""The Apply tab: one or several .inst files (mixed by weights), images in, edits out; and the image inputs,
settings and results that the Library tab shares."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr

from .app import MODEL_EVENT, App, example_folders, first_example, markdown_text, open_images
from .backend import (APPLY_RULES, MAX_VARIATIONS, ApplySettings, Instruction, InvertError, apply_settings,
                      check_distinct_outputs, check_value, describe, load_instruction, printable, save_image)
from .controls import control, label, read
from .session import Session

FOLDER, UPLOAD = "Example folder", "Upload images"
MAX_VARIATIONS_SHOWN = min(8, MAX_VARIATIONS)  # the slider's end; each variation is a sampling run


@dataclass
class ImageInputs:
    """Where the images to edit come from, and the sampling settings (one control per apply setting)."""

    source: gr.Radio
    folder: gr.Dropdown
    uploads: gr.File
    settings: dict[str, gr.components.Component]  # by setting name, as ApplySettings declares them
    variations: gr.Slider

    def components(self) -> list[gr.components.Component]:
        return [self.source, self.folder, self.uploads, *self.settings.values(), self.variations]

    @staticmethod
    def read(values: tuple) -> tuple[str, str | None, list[str] | None, ApplySettings, int]:
        """The components' values (in :meth:`components`' order) as source, folder, uploads, the checked apply
        settings (an error names the control) and the number of variations."""
        source, folder, uploads, *settings, variations = values
        given = {rule.name: read(rule, value) for rule, value in zip(APPLY_RULES, settings)}
        return source, folder, uploads, apply_settings(given, {r.name: label(r.name) for r in APPLY_RULES}), \
            check_value(variations, int, {}, "Variations")  # its range: ApplySettings.seeds


@dataclass
class Results:
    gallery: gr.Gallery
    slider: gr.ImageSlider
    files: gr.File

    def components(self) -> list[gr.components.Component]:
        return [self.gallery, self.slider, self.files]


def image_inputs(prefix: str) -> ImageInputs:
    folders = example_folders("toy/*/test/before")
    source = gr.Radio([FOLDER, UPLOAD], value=FOLDER if folders else UPLOAD, show_label=False)
    folder = gr.Dropdown(folders, value=first_example(folders, "night"), allow_custom_value=True,
                         label="Image folder", visible=bool(folders), info="Any folder of images on this computer.")
    uploads = gr.File(file_count="multiple", file_types=["image"], label="Images to edit", visible=not folders,
                      elem_id=f"{prefix}-images")
    source.change(lambda s: (gr.update(visible=s == FOLDER), gr.update(visible=s == UPLOAD)), source,
                  [folder, uploads], queue=False, api_visibility="private")
    with gr.Accordion("Sampling settings (empty: the file's own)", open=True):
        settings = {rule.name: control(rule, rule.default) for rule in APPLY_RULES}
        variations = gr.Slider(1, MAX_VARIATIONS_SHOWN, 1, step=1, label="Variations",
                               info="results per image, from seeds seed, seed+1, ... (fresh noise)")
    return ImageInputs(source, folder, uploads, settings, variations)


def results_view(app: App, prefix: str) -> Results:
    gallery = gr.Gallery(label="Results", columns=5, height=150, object_fit="contain", format="png",
                         elem_classes=app.pixel_class(), elem_id=f"{prefix}-results")
    slider = gr.ImageSlider(label="Before | after (select a result above)", type="filepath", height=300,
                            elem_classes=app.pixel_class(), interactive=False, elem_id=f"{prefix}-slider")
    files = gr.File(label="Download", file_count="multiple", height=120, elem_id=f"{prefix}-files")
    return Results(gallery, slider, files)


def edit(app: App, session: Session, tab: str, inst: Instruction, values: tuple) -> tuple:
    """Edit the chosen images (every variation) with the settings of ``values`` (an :class:`ImageInputs`'
    components' values) and write the results to the session folder: the outputs of a Results view. ``tab``:
    whose gallery the results fill (its slider follows them)."""
    source, folder, uploads, settings, count = ImageInputs.read(values)
    seeds = settings.seeds(inst.meta.noise_seed, count, label)
    fresh = settings.noise_mode(count, label) == "fresh"
    files, images = open_images(session, uploads if source == UPLOAD else None,
                                folder if source == FOLDER else None, "images")
    names = {(f, s): f"{f.stem}_seed{s}" if count > 1 else f.stem for s in seeds for f in files}
    check_distinct_outputs([f"{n}.png" for n in names.values()])
    out = session.new_folder("results")
    rows: list[tuple[str, str, str]] = []  # (before, result, caption)
    for seed in seeds:
        edited = app.model.apply(inst, images, replace(settings, seed=seed if fresh else None))
        for f, before, after in zip(files, images, edited):
            name = names[f, seed]
            save_image(after, out / f"{name}.png")
            # The slider compares images of one size: the input as the pipeline saw it (rounded down to 8).
            save_image(before.resize(after.size), out / f"{name}_before.png")
            rows.append((str(out / f"{name}_before.png"), str(out / f"{name}.png"),
                         printable(name if count == 1 else f"{f.stem} · seed {seed}")))
    session.results[tab] = rows
    return ([(r, caption) for _, r, caption in rows], (rows[0][0], rows[0][1]), [r for _, r, _ in rows])


def build(app: App, learned: gr.State) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            gr.Markdown("### 1. Instruction\nOne .inst file, or several mixed by weight (same method).")
            chosen = gr.Dropdown([], multiselect=True, label="Learned in this session", elem_id="apply-learned")
            uploaded = gr.File(file_count="multiple", file_types=[".inst"], label="Or upload .inst files",
                               elem_id="apply-inst-files")
            weights = gr.Textbox(label="Mix weights", placeholder="e.g. 0.7, 0.3 (empty: equal weights)")
            listing = gr.Markdown(elem_id="apply-listing")
            gr.Markdown("### 2. Images")
            inputs = image_inputs("apply")
            run = gr.Button("Apply", variant="primary", elem_id="apply-button")
        with gr.Column(scale=7):
            results = results_view(app, "apply")

    learned.change(lambda names: gr.update(choices=names, value=names[-1:]), learned, chosen, queue=False,
                   api_visibility="private")

    def listed(names, uploads, request: gr.Request):
        session = app.session(request)
        try:
            insts = _instructions(session, names, uploads)
        except InvertError as exc:
            return f"⚠️ {markdown_text(app.sessions.shorten(str(exc)))}"
        return "\n".join(f"{i}. **{markdown_text(name)}**: {markdown_text(describe(inst))}"
                         for i, (name, inst) in enumerate(insts, 1))

    gr.on([chosen.change, uploaded.change], app.handler(listed), [chosen, uploaded], listing,
          api_visibility="private")

    def apply(request: gr.Request, names, uploads, weights, *values):
        session = app.session(request)
        insts = [inst for _, inst in _instructions(session, names, uploads)]
        if not insts:
            raise InvertError("choose an instruction learned in this session or upload an .inst file")
        return edit(app, session, "apply", _mixed(app, insts, weights), values)

    run.click(app.handler(apply), [chosen, uploaded, weights, *inputs.components()], results.components(),
              api_name="apply", **MODEL_EVENT)
    follow_selection(app, "apply", results)


def follow_selection(app: App, tab: str, results: Results) -> None:
    """The before | after slider shows the result selected in the gallery."""

    def selected(event: gr.SelectData, request: gr.Request):
        rows = app.session(request).results.get(tab, [])
        return (rows[event.index][0], rows[event.index][1]) if 0 <= event.index < len(rows) else gr.skip()

    results.gallery.select(selected, None, results.slider, queue=False, api_visibility="private")


def _instructions(session: Session, names: list[str] | None, uploads: list[str] | None
                  ) -> list[tuple[str, Instruction]]:
    """The chosen instructions in order: those learned in this session, then the uploaded files (read where
    Gradio put them: unlike images, two of one name are fine)."""
    paths = [session.instructions[n] for n in names or [] if n in session.instructions] + list(uploads or [])
    return [(Path(p).name, load_instruction(p)) for p in paths]


def _mixed(app: App, insts: list[Instruction], weights: str | None) -> Instruction:
    if len(insts) == 1 and not (weights or "").strip():
        return insts[0]
    if not (weights or "").strip():
        return app.model.mix(insts, [1 / len(insts)] * len(insts))
    try:
        values = [float(w) for w in weights.replace(",", " ").split()]
    except ValueError:
        raise InvertError(f"mix weights {weights!r}: expected numbers such as 0.7, 0.3") from None
    if len(values) != len(insts):
        raise InvertError(f"{len(values)} mix weights for {len(insts)} instructions")
    return app.model.mix(insts, values)
