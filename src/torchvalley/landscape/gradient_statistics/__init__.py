"""Statistics of minibatch gradients and of SGD: the fluctuation-dissipation ratio (with its
scheduler and monitor) and the von Mises–Fisher concentration of gradient directions."""
