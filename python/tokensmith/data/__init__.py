"""Training data from chat and text datasets: template markers and EOS as ids, contents as
text, labels, packing, Parquet output.

>>> from tokensmith import Tokenizer, data
>>> tok = Tokenizer.from_pretrained("model_dir")                       # doctest: +SKIP
>>> ex = data.encode_chat(tok, messages)                               # doctest: +SKIP
>>> data.prepare(["train.jsonl"], tok, "out/", max_length=4096)        # doctest: +SKIP
"""

from .chat import IGNORE_INDEX, ChatTemplateError, Example, encode_chat, render_template
from .lint import Finding, lint
from .prepare import DataError, ExampleEncoder, Packer, PrepareResult, prepare
from .sources import read_records, to_example_input

__all__ = [
    "IGNORE_INDEX",
    "ChatTemplateError",
    "DataError",
    "Example",
    "ExampleEncoder",
    "Finding",
    "Packer",
    "PrepareResult",
    "encode_chat",
    "lint",
    "prepare",
    "read_records",
    "render_template",
    "to_example_input",
]
