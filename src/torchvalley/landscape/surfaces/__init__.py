"""The loss on lines, planes and paths through parameter space, and their figures."""
