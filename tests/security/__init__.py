"""Security of inputs: fuzzed device and cloud answers; secrets never leak."""
