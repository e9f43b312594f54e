"""Performance code behind the encoders' hooks (``Encoder.fast_step``, ``Encoder.fused_step``):
the reconstruction loss's hand-written backward (``reconstruction``), the MLP's C++ CPU step
(``native``) and the SAE's fused Triton GPU step (``fused``). Each has a plain torch twin the
tests compare it with; the loop never imports this package."""
