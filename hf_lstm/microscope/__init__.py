"""The LSTM microscope: watch a trained model's gates, token by token, in the browser (a Gradio app).

    hf-lstm microscope runs/ptb-lstm            # then open http://127.0.0.1:7860
    hf-lstm train ... --write_space_app         # also writes app.py for a Hugging Face Space

`reading` runs the model (generation, one pass with `output_gates=True`, what a token leaves in memory),
`render` draws what was read as inline SVG, `app` lays it out as a `gradio.Blocks`. Those three files and
this one import only the standard library, numpy, torch, transformers, gradio and each other: `space` copies
them next to an `app.py` so that a Space runs them without this package. `cli` is `hf-lstm microscope`.
docs/MICROSCOPE.md shows the app and how to put it on a Space.
"""
