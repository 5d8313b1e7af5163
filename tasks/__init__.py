"""Prefect tasks: thin wrappers over `past/`, each returning a small manifest (paths + sha256), never weights.

Conventions (see tasks/common.py): caching by inputs + task source, so a re-run of a flow skips finished steps;
retries only where a retry can help (endpoints, I/O), never on deterministic errors (`PastError`); training
tasks carry the `accelerator` tag, whose concurrency limit (1 per device, set by `past up`) keeps two
trainings off one device.
"""
