"""Inputs: video clips, event-camera recordings, the synthetic action set, datasets."""
