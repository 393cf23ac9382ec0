"""The inference engine: one component per pinned model, behind a small interface."""
