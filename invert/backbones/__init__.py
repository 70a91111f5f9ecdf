"""The frozen editing model: loading it (``editor``), what is known of it before loading (``model_info``), the
layout of its guidance batch (``guidance``), its offline tokenizer and the shipped configs."""
