"""Data: the Video-R1 record, prompt templates, video loading and the synthetic video-QA set."""

from veripo.data.prompts import PromptStyle, build_messages, build_prompt
from veripo.data.records import (DATA_TYPES, PROBLEM_TYPES, LoadReport, Record, RecordError, load_records,
                                 write_records)

__all__ = ["DATA_TYPES", "PROBLEM_TYPES", "LoadReport", "PromptStyle", "Record", "RecordError",
           "build_messages", "build_prompt", "load_records", "write_records"]
