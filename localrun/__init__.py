"""localrun: run large language models on your own machine, on llama.cpp."""

__version__ = "0.1.0"
