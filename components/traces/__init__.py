"""Reasoning traces for SFT: trace teachers (an offline analyst, an OpenAI-compatible endpoint) and
GR2's rejection / targeted sampling over them."""

from components.data.splits import training_interactions
from components.traces.analyst import AnalystStats, AnalystTeacher, AnalystWeights, trace_length
from components.traces.openai_client import OpenAITeacher, TeacherUnavailable
from components.traces.sampling import example_rng, generate_traces
from components.traces.teacher import InvalidProposal, Proposal, TraceTeacher

__all__ = [
    "AnalystStats",
    "AnalystTeacher",
    "AnalystWeights",
    "InvalidProposal",
    "OpenAITeacher",
    "Proposal",
    "TeacherUnavailable",
    "TraceTeacher",
    "example_rng",
    "generate_traces",
    "trace_length",
    "training_interactions",
]
