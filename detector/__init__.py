"""bulkwatch: a streaming detector of bulk and automated messaging abuse."""

__version__ = "0.1.0"
