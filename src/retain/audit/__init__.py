"""Pre-flight data audit: what is wrong with the training data before a GPU hour is spent."""
