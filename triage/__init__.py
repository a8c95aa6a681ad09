"""triage: pneumothorax triage for chest radiographs."""

__version__ = "0.1.0"
