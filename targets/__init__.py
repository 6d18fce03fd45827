"""ember.targets."""
