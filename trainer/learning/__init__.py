"""How models learn: the base learner, the update methods, the meta generator and its kernels."""
