"""The embedded demo: a synthetic world of simple scenes (world) and the pipeline that trains a tiny model
on it from scratch, evaluates it on held-out scenes and reports (pipeline; `tinylmm demo`)."""

from .pipeline import QUICK, DemoSettings, run_demo

__all__ = ["QUICK", "DemoSettings", "run_demo"]
