"""Stage I and the multi-step stages: adapter training on Ray Train.

- `loop.train_loop_per_worker`: the one training loop (AdaLoRA or LoRA, masking, accumulation, cosine
  warm-up, checkpoint/resume), run by a `TorchTrainer` or called directly.
- `runner`: plans and schedules a stage (12 skills over one shared trainer; data-parallel trainers for
  big skills; CPT / SFT / task adaptation; the CPT -> SFT -> task pipeline) and writes manifests and curves.
- `export.export_lora`: AdaLoRA adapter -> plain LoRA adapter with identical outputs.
- `config`: the typed stage configs behind `train/*.yaml`; `commands`: `mdkif train CONFIG`.
"""
