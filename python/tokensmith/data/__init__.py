"""Training data from chat and text datasets: template markers, task tokens and EOS as ids,
contents as text, labels, packing, Parquet output.

>>> from tokensmith import Tokenizer, data
>>> tok = Tokenizer.from_pretrained("model_dir")                       # doctest: +SKIP
>>> ex = data.encode_chat(tok, messages)                               # doctest: +SKIP
>>> data.prepare(["train.jsonl"], tok, "out/", max_length=4096)        # doctest: +SKIP
"""

from ..errors import DataError
from .chat import IGNORE_INDEX, ChatTemplateError, Example, content_special_tokens, encode_chat, render_template
from .eos import NoEOSError, eos_token
from .lint import Finding, lint
from .prepare import ExampleEncoder, Packer, PrepareResult, SkippedRecord, prepare
from .sources import read_records, to_example_input, to_tools

__all__ = [
    "IGNORE_INDEX",
    "ChatTemplateError",
    "DataError",
    "Example",
    "ExampleEncoder",
    "Finding",
    "NoEOSError",
    "Packer",
    "PrepareResult",
    "SkippedRecord",
    "content_special_tokens",
    "encode_chat",
    "eos_token",
    "lint",
    "prepare",
    "read_records",
    "render_template",
    "to_example_input",
    "to_tools",
]
