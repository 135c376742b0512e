"""The dataset-to-firmware pipeline: plain functions per stage (see the packages) that dodo.py declares as tasks."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project tree: boards/, mcux_app/, zephyr_app/, dodo.py
