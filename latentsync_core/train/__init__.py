"""LatentSync training (no ComfyUI imports): the official stage-1/2 step and LoRA fine-tuning.

Modules: ``config`` (official yaml presets), ``trainable`` (which U-Net parameters train), ``syncnet``
(StableSyncNet), ``videomae`` + ``trepa`` (TREPA), ``lpips`` (LPIPS without torchvision), ``step`` (one
training step: noise, x0, decoded pixels, the four losses, clipping, AdamW), ``lora`` (peft adapters saved as
kohya-style safetensors), ``checkpoint`` (exact resume, atomic saves).
"""
