"""Ray Train jobs: causal-LM SFT (finetune)."""
