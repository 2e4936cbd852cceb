"""CLI commands that live beside their feature; ``pipeline.cli`` registers them."""
