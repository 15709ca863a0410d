"""Everything that knows llama.cpp: its bindings, the model and its step loop, the sampler,
log capture, device discovery and the offload rules.

Nothing is imported here: importing the bindings alone (as the GGUF reader does for tensor
sizes) must not load a model backend.
"""
