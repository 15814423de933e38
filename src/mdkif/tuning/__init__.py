"""Ray Tune searches over router and AdaLoRA settings (`search`), with a CMA-ES searcher (`searcher`)."""
