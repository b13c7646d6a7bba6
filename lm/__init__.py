"""The PTB word-level language-model harness (Zaremba et al. 2014; TensorFlow PTB tutorial)."""
