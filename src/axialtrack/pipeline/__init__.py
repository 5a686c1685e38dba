"""The live analysis pipeline: detection, crop pairs, Z inference, linking, runner."""
