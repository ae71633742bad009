"""Runs tiktoken's suite offline: the shared rank files stand in for tiktoken's downloads
(r50k_base is ../shared/data/tiktoken/gpt2.tiktoken; p50k_base is derived from it and checked
against its published hash)."""

import os

from conftest import TIKTOKEN_DIR, require_data


def pytest_runtest_setup(item) -> None:
    require_data()
    # Also read by the suite's subprocesses, which inherit the environment.
    os.environ["TOKENSMITH_TIKTOKEN_DIR"] = str(TIKTOKEN_DIR)
