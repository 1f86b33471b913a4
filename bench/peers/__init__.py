"""The peer harness: saeforge's training loop timed beside SAELens, sparsify and dictionary_learning."""
