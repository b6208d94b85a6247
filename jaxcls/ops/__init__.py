"""The operations models are built from: activation functions by name
(:mod:`.activations`), faster XLA:CPU forms of convolution and pooling
(:mod:`.kernels`), the one way to the accelerators of :mod:`jaxcls.accel`
(:mod:`.fastpath`), and the training techniques (:mod:`.techniques`)."""
