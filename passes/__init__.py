"""ember.passes: one module per graph rewrite, and the registry PASSES."""
