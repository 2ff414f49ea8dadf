"""What the trainer and the API processes share: the store of posted ratings and the published model
versions."""
