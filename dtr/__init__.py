"""The payer side of Da Vinci DTR 2.0.1: adaptive forms driven by the policy. No I/O."""
