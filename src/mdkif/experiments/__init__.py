"""Experiments over the whole method: the CPU-scale reference run (`reference`, `mdkif reference`) and the
unseen-task protocol (`unseen`, `mdkif route --experiment`). They sit above routing and evaluation."""
