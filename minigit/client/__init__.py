"""The minigit client: the `minigit` commands and everything only they use."""
