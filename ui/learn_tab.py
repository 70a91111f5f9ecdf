"""The Learn tab: exemplar pairs in, a live fit (progress, loss curve, preview edits, Stop and Resume), an .inst
file out."""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd
from PIL import Image

from .app import MODEL_EVENT, App, example_folders, first_example, markdown_text, side_by_side
from .backend import (FIT_RULES, InvertError, Pair, check_value, find_pairs, is_image_file, methods, open_image,
                      printable, save_instruction, save_state)
from .controls import control, label, read, shown
from .fitjob import FitJob
from .session import Session

FOLDER, UPLOAD = "Exemplar folder", "Upload pairs"
PREVIEWS = 4  # preview edits shown during a fit
PREVIEW_EVERY = "Preview every N steps"
FIRST_METHOD = "brush"
MAIN = ("steps", "lr", "guidance", "image_guidance", "init_text", "seed")  # shown first; the rest folded away
RULES = {rule.name: rule for rule in FIT_RULES}
LABELS = {rule.name: label(rule.name) for rule in FIT_RULES}  # how an error names a setting: its control


def preview_interval(steps: int) -> int:
    """Five previews per fit by default."""
    return max(1, int(steps) // 5)


def build(app: App, blocks: gr.Blocks) -> gr.State:
    """The tab's components and events; returns the names of the session's learned instructions (a State whose
    changes the Apply tab follows)."""
    defaults = app.model.fit_defaults(FIRST_METHOD)
    folders = example_folders("toy/*/train")
    learned = gr.State([])
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            gr.Markdown("### 1. Show the edit\nA few before/after pairs of the same edit.")
            source = gr.Radio([FOLDER, UPLOAD], value=FOLDER if folders else UPLOAD, show_label=False)
            folder = gr.Dropdown(folders, value=first_example(folders, "night"), allow_custom_value=True,
                                 label="Exemplar folder", visible=bool(folders),
                                 info="A folder with before/ and after/ (files matched by name), or "
                                      "NAME_before / NAME_after files; any folder on this computer.")
            with gr.Row(visible=not folders) as uploads:
                befores = gr.File(file_count="multiple", file_types=["image"], label="Before images",
                                  elem_id="learn-befores")
                afters = gr.File(file_count="multiple", file_types=["image"], label="After images",
                                 elem_id="learn-afters")
            heldout = gr.File(file_count="multiple", file_types=["image"], visible=not folders,
                              label="Held-out images for previews (optional; default: the first befores)")
            pairs_info = gr.Markdown(elem_id="learn-info")
            pairs_view = gr.Gallery(label="Pairs: before | after", columns=4, height="auto", object_fit="contain",
                                    format="png", elem_classes=app.pixel_class(), buttons=[], elem_id="learn-pairs")
            encoded_view = gr.Gallery(label="The model's edit encoder, no fitting: input | edit", columns=4,
                                      height=190, format="png", object_fit="contain", visible=app.model.encoder
                                      is not None, elem_classes=app.pixel_class(), elem_id="learn-encoded")
            with gr.Accordion("InstructBrush's phrases (its init text when Init text is empty)", open=True):
                phrases_info = gr.Markdown("Shown once the pairs are checked.", elem_id="learn-phrases")
                phrases_table = gr.Dataframe(headers=["phrase", "side", "Δ CLIP"], max_height=180,
                                             interactive=False, visible=False, column_widths=["60%", "20%", "20%"])
        with gr.Column(scale=7):
            gr.Markdown("### 2. Learn it\nEvery setting starts at what `invert fit` would use for this model and "
                        "method (the model folder's own, else the library's); only those you change are sent.")
            with gr.Row():
                method = gr.Radio(methods(), value=FIRST_METHOD, label="Method")
                preview_every = gr.Number(preview_interval(defaults["steps"]), label=PREVIEW_EVERY,
                                          info="and at the end; 0: none",
                                          elem_id="learn-preview-every")
            made: dict[str, gr.components.Component] = {}
            with gr.Row():
                for name in MAIN:
                    made[name] = control(RULES[name], defaults[name], elem_id=f"learn-{name.replace('_', '-')}")
            with gr.Accordion("All settings", open=False):
                for rule in FIT_RULES:
                    if rule.name not in MAIN:
                        made[rule.name] = control(rule, defaults.get(rule.name, rule.default),
                                                  visible=rule.name in defaults)
            settings = [made[rule.name] for rule in FIT_RULES]  # the order /fit takes them in
            with gr.Row():
                fit = gr.Button("Fit", variant="primary", elem_id="fit-button")
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop-button")
                resume = gr.Button("Resume", interactive=False, elem_id="resume-button")
            status = gr.HTML(_status_html("", 0, 0), elem_id="fit-status")
            loss_plot = gr.LinePlot(_losses([]), x="step", y="loss", height=200, label="Loss", x_title="step",
                                    y_title="loss per step")
            previews = gr.Gallery(label="Preview edits: input | edit", columns=4, height=190, format="png",
                                  object_fit="contain", elem_classes=app.pixel_class(), elem_id="fit-previews")
            with gr.Row():
                inst_file = gr.File(label="Learned instruction (.inst)", elem_id="inst-file", height=100)
                ckpt_file = gr.File(label="Stopped fit's state (invert fit --resume)", visible=False, height=100)

    pair_inputs = [source, folder, befores, afters]
    source.change(lambda s: (gr.update(visible=s == FOLDER), gr.update(visible=s == UPLOAD),
                             gr.update(visible=s == UPLOAD)), source, [folder, uploads, heldout], queue=False,
                  api_visibility="private")

    def check(source, folder, befores, afters, request: gr.Request):
        session = app.session(request)
        session.checked = None
        try:
            pairs, name, _ = _gather(session, source, folder, befores, afters)
            shown_befores, shown_afters = app.model.load_pairs(pairs)
        except InvertError as exc:
            return [], f"⚠️ {markdown_text(app.sessions.shorten(str(exc)))}"
        session.checked = pairs
        gallery = [(side_by_side(b, a), printable(p.name)) for p, b, a in zip(pairs, shown_befores, shown_afters)]
        w, h = shown_befores[0].size
        return gallery, f"**{len(pairs)} pairs** ({markdown_text(name)}), used at {w}x{h}."

    def phrases(request: gr.Request):
        pairs = app.session(request).checked
        if not pairs:
            return "Shown once the pairs are checked.", gr.update(visible=False)
        choice = app.model.phrases(pairs)
        text = f"**{markdown_text(choice.text)}**" if choice.text else "none above the threshold: an empty init text"
        rows = [[printable(c["phrase"]), c["side"], round(c["sensitivity"], 4)] for c in choice.candidates]
        return f"InstructBrush would start from: {text}", gr.update(value=rows, visible=True)

    def encoded(source, folder, befores, afters, held, request: gr.Request):
        """The encoder's instruction for the checked pairs, applied to the preview images at once."""
        session = app.session(request)
        if not session.checked or app.model.encoder is None:
            return []
        heldout_dir = _gather(session, source, folder, befores, afters)[2] if source == FOLDER else None
        images = _preview_images(app, session, source, held, heldout_dir) or \
            app.model.load_pairs(session.checked)[0][:PREVIEWS]
        edits = app.model.apply(app.model.encode(session.checked), images)
        return [(side_by_side(i, e), "encoder") for i, e in zip(images, edits)]

    checked = gr.on([source.change, folder.change, befores.change, afters.change, blocks.load],
                    app.handler(check), pair_inputs, [pairs_view, pairs_info], api_visibility="private")
    checked.then(app.handler(phrases), None, [phrases_info, phrases_table], api_visibility="private",
                 **MODEL_EVENT)
    if app.model.encoder is not None:
        checked.then(app.handler(encoded), [*pair_inputs, heldout], encoded_view, api_visibility="private",
                     **MODEL_EVENT)

    outputs = [status, loss_plot, previews, inst_file, ckpt_file, fit, stop, resume, learned]

    # The defaults the settings show (per FIT_CHOICES, a choice's is the one before it was set): a setting that
    # is not at its own was changed by the user.
    shown_defaults = gr.State(defaults)

    def defaults_changed(method, before, *values):
        """Method, Official, Init or Encoder file changed: each setting the user has not changed shows the value
        ``invert fit`` would now use for it (Official: the official code's); those changed keep theirs, as the
        options given on the command line win."""
        kept, defaults = app.model.shown_defaults(method, {r.name: read(r, v) for r, v in zip(FIT_RULES, values)},
                                                  before)
        updates = [gr.update(visible=False) if rule.name not in defaults else gr.update(visible=True)
                   if rule.name in kept else gr.update(value=shown(rule, defaults[rule.name]), visible=True)
                   for rule in FIT_RULES]
        return [*updates, gr.skip() if "steps" in kept else preview_interval(defaults["steps"]), defaults]

    gr.on([method.change, made["official"].change, made["init"].change, made["encoder_file"].blur,
           made["encoder_file"].submit], defaults_changed, [method, shown_defaults, *settings],
          [*settings, preview_every, shown_defaults], api_visibility="private")

    def start(request: gr.Request, source, folder, befores, afters, held, method, every, *values):
        session = app.session(request)
        if session.job is not None and session.job.running:
            raise InvertError("a fit is already running in this page")
        options = app.model.fit_options(method, {rule.name: read(rule, v) for rule, v in zip(FIT_RULES, values)},
                                        LABELS)  # what the user changed, checked: an error names its control
        pairs, name, heldout_dir = _gather(session, source, folder, befores, afters)
        shown_befores, _ = app.model.load_pairs(pairs)
        images = _preview_images(app, session, source, held, heldout_dir) or shown_befores[:PREVIEWS]
        every = check_value(every, int, {"minimum": 0}, PREVIEW_EVERY)
        session.job = FitJob(app.model, pairs, method, options, images, every, sources=LABELS).start()
        session.job_name = f"{name}-{method}"
        yield from _stream(session, session.job, images)

    def resumed(request: gr.Request):
        session = app.session(request)
        if session.job is None or session.job.running:
            raise InvertError("there is no stopped fit to resume")
        session.job = session.job.resumed().start()
        yield from _stream(session, session.job, session.job.previews)

    def stopped(request: gr.Request):
        job = app.session(request).job
        if job is not None:
            job.stop()
        return gr.update(interactive=False)

    fit_inputs = [*pair_inputs, heldout, method, preview_every, *settings]
    fit.click(app.handler(start), fit_inputs, outputs, api_name="fit", show_progress="hidden", **MODEL_EVENT)
    resume.click(app.handler(resumed), None, outputs, api_name="resume", show_progress="hidden", **MODEL_EVENT)
    stop.click(stopped, None, stop, api_name="stop", queue=False)
    return learned


def _stream(session: Session, job: FitJob, inputs: list[Image.Image]) -> Iterator[tuple]:
    """The page's view of a running fit, sent whenever it changes."""
    started = time.perf_counter()
    running = (gr.update(interactive=False), gr.update(interactive=True), gr.update(interactive=False))
    loss, seconds, previews = None, 0.0, []
    for _ in job.watch():
        seconds = time.perf_counter() - started
        loss = job.losses[-1] if job.losses else None
        previews = []  # a new fit clears the last one's
        if job.preview is not None:
            step, edits = job.preview
            previews = [(side_by_side(i, e), f"step {step}") for i, e in zip(inputs, edits)]
        if job.outcome is None:
            yield (_status_html("fitting", job.step, job.total, loss, seconds, job.score), _losses(job.losses), previews,
                   gr.skip(), gr.update(visible=False), *running, gr.skip())
    idle = (gr.update(interactive=True), gr.update(interactive=False))
    if job.outcome == "failed":  # the buttons back to idle, then the message
        yield (_status_html("failed", job.step, job.total, loss, seconds), gr.skip(), gr.skip(), gr.skip(),
               gr.skip(), *idle, gr.update(interactive=False), gr.skip())
        raise InvertError(job.message)
    if job.outcome == "stopped":
        ckpt = save_state(job.state, session.folder / f"{session.job_name}.ckpt")
        yield (_status_html(f"stopped: {job.message}", job.step, job.total, loss, seconds), _losses(job.losses),
               previews, gr.skip(), gr.update(value=str(ckpt), visible=True), *idle, gr.update(interactive=True),
               gr.skip())
        return
    path = save_instruction(job.instruction, session.unique_path(f"{session.job_name}.inst"))
    session.instructions[path.name] = path
    check = job.instruction.meta.fit_check  # the fit's one-line warning, if its self-check found one
    yield (_status_html(f"done: {path.name}" + (f" · {check}" if check else ""), job.step, job.total, loss, seconds,
                        job.score), _losses(job.losses), previews,
           str(path), gr.update(visible=False), *idle, gr.update(interactive=False), list(session.instructions))


def _gather(session: Session, source: str, folder: str | None, befores: list[str] | None,
            afters: list[str] | None) -> tuple[list[Pair], str, Path | None]:
    """The exemplar pairs (found and matched as ``invert fit`` does), a name for the edit, and the held-out
    images' folder of an exemplar folder laid out as examples/toy/EDIT/{train,test}."""
    if source == UPLOAD:
        if not befores or not afters:
            raise InvertError("upload the before images and the after images (matched by file name)")
        root = session.new_folder("pairs")
        session.copy_uploads(befores, root / "before")
        session.copy_uploads(afters, root / "after")
        return find_pairs(root), "edit", None
    if not folder:
        raise InvertError("choose an exemplar folder")
    path = Path(folder).expanduser()
    if path.name == "train":
        return find_pairs(path), path.parent.name, path.parent / "test" / "before"
    return find_pairs(path), path.name, None


def _preview_images(app: App, session: Session, source: str, held: list[str] | None,
                    heldout_dir: Path | None) -> list[Image.Image]:
    if source == UPLOAD and held:
        files = session.copy_uploads(held[:PREVIEWS], session.new_folder("heldout"))
    elif heldout_dir is not None and heldout_dir.is_dir():
        files = sorted(f for f in heldout_dir.iterdir() if is_image_file(f))[:PREVIEWS]
    else:
        return []
    return app.model.at_resolution([open_image(f) for f in files])


def _losses(losses: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses})


def _status_html(what: str, step: int, total: int, loss: float | None = None, seconds: float | None = None,
                 score: float | None = None) -> str:
    share = 100 * step / total if total else 0
    facts = [f"step {step} / {total}"] if total else []
    if loss is not None:
        facts.append(f"loss {loss:.4g}")
    if score is not None:
        facts.append(f"val {score:.2f} dB")  # as the CLI's progress bar
    if seconds is not None:
        facts.append(f"{seconds:.1f} s")
    line = " · ".join([html.escape(printable(what))] * bool(what) + facts) or "Press Fit to start."
    return (f'<div class="fit-bar"><div style="width:{share:.1f}%"></div></div>'
            f'<div class="fit-line">{line}</div>')

