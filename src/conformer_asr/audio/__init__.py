"""Audio loading, features and augmentation."""
