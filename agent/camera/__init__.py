"""Roadside camera role: FrameSource → motion gate → ONNX detector → tracker → rules → agent.

Counts (``traffic.count``) and signed violations with evidence (``traffic.violation``) leave the
device through the agent's local API; frames never do. See docs/camera.md.
"""
