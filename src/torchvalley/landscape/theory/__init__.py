"""Checks of theory results with their own training loops: layer alignment of deep linear
networks and the neural tangent kernel of two-layer ReLU networks."""
