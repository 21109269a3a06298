"""jaxpetct: vision-language models for whole-body PET/CT with Vietnamese reports, in JAX/Flax NNX.

One data path, one folder per stage:
studies (study on disk -> de-identified Study) -> text (reports, lesions, prompts) -> data (records -> batches)
-> models (CT-ViT, projector, decoders, LoRA) -> train (jitted step, checkpoints) -> eval (decode, metrics).
"""

__version__ = "0.1.0"
