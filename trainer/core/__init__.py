"""What serving and training share: settings, the model's forward and checkpoints,
features and histories, the version registry, and the store."""
