"""The Apply tab: one or several .inst files (mixed by weights), images in, edits out; and the image inputs,
settings and results that the Library tab shares."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .app import MODEL_EVENT, App, example_folders, first_example, markdown_text, open_images
from .backend import Instruction, InvertError, describe, load_instruction, printable, save_image
from .session import Session

FOLDER, UPLOAD = "Example folder", "Upload images"
MAX_VARIATIONS = 8


@dataclass
class ImageInputs:
    """Where the images to edit come from, and the sampling settings."""

    source: gr.Radio
    folder: gr.Dropdown
    uploads: gr.File
    text: gr.Textbox
    strength: gr.Slider
    steps: gr.Slider
    guidance: gr.Textbox
    image_guidance: gr.Textbox
    seed: gr.Number
    variations: gr.Slider
    fresh_noise: gr.Checkbox

    def components(self) -> list[gr.components.Component]:
        return [self.source, self.folder, self.uploads, self.text, self.strength, self.steps, self.guidance,
                self.image_guidance, self.seed, self.variations, self.fresh_noise]


@dataclass
class Results:
    gallery: gr.Gallery
    slider: gr.ImageSlider
    files: gr.File

    def components(self) -> list[gr.components.Component]:
        return [self.gallery, self.slider, self.files]


def image_inputs(app: App, prefix: str) -> ImageInputs:
    folders = example_folders("toy/*/test/before")
    source = gr.Radio([FOLDER, UPLOAD], value=FOLDER if folders else UPLOAD, show_label=False)
    folder = gr.Dropdown(folders, value=first_example(folders, "night"), allow_custom_value=True,
                         label="Image folder", visible=bool(folders), info="Any folder of images on this computer.")
    uploads = gr.File(file_count="multiple", file_types=["image"], label="Images to edit", visible=not folders,
                      elem_id=f"{prefix}-images")
    source.change(lambda s: (gr.update(visible=s == FOLDER), gr.update(visible=s == UPLOAD)), source,
                  [folder, uploads], queue=False, api_visibility="private")
    text = gr.Textbox(label="Extra text (a hybrid instruction)", placeholder="e.g. with a red circle")
    with gr.Row():
        strength = gr.Slider(0, 2, 1, step=0.05, label="Strength", info="0: the init text, 1: as learned")
        steps = gr.Slider(1, 100, 20, step=1, label="Sampling steps")
    with gr.Row():
        # Textboxes, not numbers: a number field cannot be left empty (the file's own scale).
        guidance = gr.Textbox(label="Text guidance", placeholder="the file's")
        image_guidance = gr.Textbox(label="Image guidance", placeholder="the file's")
    with gr.Row():
        seed = gr.Number(0, precision=0, label="Seed")
        variations = gr.Slider(1, MAX_VARIATIONS, 1, step=1, label="Variations", info="seeds seed, seed+1, ...")
        fresh_noise = gr.Checkbox(False, label="Fresh noise", info="from the seed, not the fit's own noise")
    return ImageInputs(source, folder, uploads, text, strength, steps, guidance, image_guidance, seed, variations,
                       fresh_noise)


def results_view(app: App, prefix: str) -> Results:
    gallery = gr.Gallery(label="Results", columns=5, height=150, object_fit="contain", format="png",
                         elem_classes=app.pixel_class(), elem_id=f"{prefix}-results")
    slider = gr.ImageSlider(label="Before | after (select a result above)", type="filepath", height=300,
                            elem_classes=app.pixel_class(), interactive=False, elem_id=f"{prefix}-slider")
    files = gr.File(label="Download", file_count="multiple", height=120, elem_id=f"{prefix}-files")
    return Results(gallery, slider, files)


def edit(app: App, session: Session, tab: str, inst: Instruction, source: str, folder: str | None,
         uploads: list[str] | None, text: str, strength: float, steps: float, guidance: str | None,
         image_guidance: str | None, seed: float | None, variations: float, fresh_noise: bool) -> tuple:
    """Edit the chosen images (every variation) and write the results to the session folder: the outputs of a
    Results view. ``tab``: whose gallery the results fill (its slider follows them)."""
    files, images = open_images(session, uploads if source == UPLOAD else None,
                                folder if source == FOLDER else None, "images")
    stems = [f.stem.casefold() for f in files]
    if len(set(stems)) != len(stems):
        raise InvertError("two images share a file stem; their results would overwrite each other")
    scales = {"guidance": _scale(guidance, "Text guidance"), "image_guidance": _scale(image_guidance, "Image guidance")}
    out = session.new_folder("results")
    count, seed = int(variations), int(seed or 0)
    rows: list[tuple[str, str, str]] = []  # (before, result, caption)
    for v in range(count):
        edited = app.model.apply(inst, images, text=text, strength=float(strength), steps=int(steps), seed=seed + v,
                                 fresh_noise=bool(fresh_noise) or count > 1, **scales)
        for f, before, after in zip(files, images, edited):
            name = f"{f.stem}_seed{seed + v}" if count > 1 else f.stem
            save_image(after, out / f"{name}.png")
            # The slider compares images of one size: the input as the pipeline saw it (rounded down to 8).
            save_image(before.resize(after.size), out / f"{name}_before.png")
            rows.append((str(out / f"{name}_before.png"), str(out / f"{name}.png"),
                         printable(name if count == 1 else f"{f.stem} · seed {seed + v}")))
    session.results[tab] = rows
    return ([(r, caption) for _, r, caption in rows], (rows[0][0], rows[0][1]), [r for _, r, _ in rows])


def _scale(value: str | None, label: str) -> float | None:
    """A guidance scale typed in a text field; empty: None (the file's)."""
    if not (value or "").strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise InvertError(f"{label}: expected a number, not {value!r}") from None


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
            inputs = image_inputs(app, "apply")
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

    def apply(names, uploads, weights, source, folder, images, text, strength, steps, guidance, image_guidance,
              seed, variations, fresh_noise, request: gr.Request):
        session = app.session(request)
        insts = [inst for _, inst in _instructions(session, names, uploads)]
        if not insts:
            raise InvertError("choose an instruction learned in this session or upload an .inst file")
        return edit(app, session, "apply", _mixed(app, insts, weights), source, folder, images, text, strength, steps,
                    guidance, image_guidance, seed, variations, fresh_noise)

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
